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


def shared_frame_denoiser(alphas_cumprod: torch.Tensor, prediction: str, mu: float, s: float):
    """The exact denoiser for videos whose frames are all one vector ``z ~ N(μ, s²)``.

    ``model_fn(x, t, context=None)`` with ``x (B, C, T, H, W)`` and steps ``t`` of shape ``(B,)``
    or per frame ``(B, T)``. Frame ``f`` observes ``y_f = a_f·z + σ_f·ε_f``; a given frame
    (``context`` True, which must come at step 0) is ``z`` itself, so the posterior of ``z`` is
    then exact. Otherwise it is Gaussian with precision ``1/s² + Σ_f a_f²/σ_f²`` and mean
    ``(μ/s² + Σ_f a_f·y_f/σ_f²)/precision``. Each frame's output is that posterior mean of
    ``z`` (x0), or the ε and v it implies for the frame.
    """

    def model_fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None):
        b, _, frames = x.shape[:3]
        t = t if t.dim() == 2 else t[:, None].expand(b, frames)
        if context is not None:
            assert (t[context] == 0).all(), "given frames must come at step 0"
        ab = alphas_cumprod[t].to(x.dtype)[:, None, :, None, None]  # (B, 1, T, 1, 1)
        a, sigma = ab.sqrt(), (1 - ab).sqrt()
        precision = 1 / s**2 + (a * a / sigma**2).sum(2, keepdim=True)
        z = (mu / s**2 + (a * x / sigma**2).sum(2, keepdim=True)) / precision
        if context is not None:
            exact = context.any(1)  # clips with a given frame: z is that frame
            first = context.float().argmax(1)  # (B,) index of a given frame
            given = x[torch.arange(b), :, first][:, :, None]  # (B, C, 1, H, W)
            z = torch.where(exact[:, None, None, None, None], given, z)
        x0 = z.expand_as(x)
        eps = (x - a * x0) / sigma
        return {"x0": x0, "eps": eps, "v": a * eps - sigma * x0}[prediction]

    return model_fn
