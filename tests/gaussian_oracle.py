"""The exact denoiser for Gaussian data, an analytic reference for the samplers.

For data x0 ~ N(μ, s²) (each element independent) and ``x_t = a·x0 + σ·ε``, x_t is Gaussian
and the posterior means have closed forms:
``E[x0 | x_t] = μ + a·s²/(a²s² + σ²)·(x_t - aμ)``, ``E[ε | x_t] = σ/(a²s² + σ²)·(x_t - aμ)``,
and ``E[v | x_t] = a·E[ε | x_t] - σ·E[x0 | x_t]``. The MSE-optimal denoiser of every prediction
kind outputs exactly these.
"""

import torch


def optimal_denoiser(alphas_cumprod: torch.Tensor, prediction: str, mu: float, s: float):
    """``model_fn(x_t, t)`` returning the exact posterior mean of kind ``prediction``."""

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alphas_cumprod[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        a, sigma = ab.sqrt(), (1 - ab).sqrt()
        var = a * a * s * s + sigma * sigma
        x0 = mu + a * s * s / var * (x - a * mu)
        eps = sigma / var * (x - a * mu)
        return {"x0": x0, "eps": eps, "v": a * eps - sigma * x0}[prediction]

    return model_fn


def marginal(alphas_cumprod: torch.Tensor, t: int, mu: float, s: float) -> tuple[float, float]:
    """Mean and std of x_t under the Gaussian data."""
    ab = alphas_cumprod[t].item()
    return ab**0.5 * mu, (ab * s * s + 1 - ab) ** 0.5
