"""Noise correlated across frames (diffusion.frame_noise_correlation): its moments, and that
training and every sampler use it, checked against the exact denoiser of Gaussian data."""

import math

import pytest
import torch

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from vdm.diffusion.schedule import NoiseSchedule

MU, S, RHO = 0.3, 0.5, 0.6


def frame_moments(x: torch.Tensor) -> tuple[float, float, float]:
    """Mean, std and the correlation between frames 0 and 1 of ``x (N, C, T, H, W)``."""
    a, b = x[:, :, 0].flatten().double(), x[:, :, 1].flatten().double()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    return x.double().mean().item(), x.double().std().item(), corr


def test_zero_correlation_draws_exactly_torch_randn():
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=10))
    shape = (2, 3, 4, 5, 5)
    eps = diffusion.noise(shape, torch.Generator().manual_seed(7))
    assert torch.equal(eps, torch.randn(shape, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_noise_has_unit_variance_and_the_asked_correlation_between_any_two_frames(rho):
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=10), frame_noise_correlation=rho)
    eps = diffusion.noise((4000, 2, 3, 4, 4), torch.Generator().manual_seed(0))
    # n = 128k pairs per statistic: standard errors ≈ 0.003.
    mean, std, corr01 = frame_moments(eps)
    _, _, corr02 = frame_moments(eps[:, :, ::2])
    assert mean == pytest.approx(0, abs=0.015)
    assert std == pytest.approx(1, abs=0.015)
    assert corr01 == pytest.approx(rho, abs=0.015)
    assert corr02 == pytest.approx(rho, abs=0.015)
    # Different pixels and channels stay independent.
    shifted = torch.corrcoef(torch.stack([eps[:, 0, 0, 0, 0], eps[:, 1, 1, 0, 1]]))[0, 1]
    assert abs(shifted.item()) < 0.06


def test_bad_correlation_or_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="diffusion.frame_noise_correlation"):
        GaussianDiffusion(NoiseSchedule(num_steps=10), frame_noise_correlation=1.0)
    with pytest.raises(ValueError, match="diffusion.frame_noise_correlation"):
        GaussianDiffusion(NoiseSchedule(num_steps=10), frame_noise_correlation=-0.1)
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=10), frame_noise_correlation=0.5)
    with pytest.raises(ValueError, match=r"video-shaped noise \(B, C, T, H, W\)"):
        diffusion.noise((8, 3))


def test_training_noises_with_correlated_frames():
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=10), frame_noise_correlation=RHO)
    seen = {}

    def model_fn(x_t, t):
        seen["x_t"] = x_t
        return torch.zeros_like(x_t)

    x0 = torch.zeros(4000, 2, 2, 4, 4)
    diffusion.training_loss(model_fn, x0, t=torch.full((4000,), 9), generator=torch.Generator())
    _, _, corr = frame_moments(seen["x_t"])  # x_t = σ·ε when x0 = 0
    assert corr == pytest.approx(RHO, abs=0.015)


def correlated_optimal_x0(alphas_cumprod: torch.Tensor, rho: float):
    """Exact ``E[x0 | x_t]`` for x0 ~ N(μ, s²) i.i.d. and two frames whose noise is correlated
    by ρ. In the basis u = (f0 + f1)/√2, w = (f0 - f1)/√2 the noise is independent with
    variances 1 + ρ and 1 - ρ, the data with variance s² and means √2·μ and 0, so each
    coordinate has the one-dimensional Gaussian posterior mean."""

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alphas_cumprod[t[0]].item()
        a, var = math.sqrt(ab), 1 - ab
        f0, f1 = x[:, :, 0], x[:, :, 1]
        out = []
        for z, m, lam in (
            ((f0 + f1) / math.sqrt(2), math.sqrt(2) * MU, 1 + rho),
            ((f0 - f1) / math.sqrt(2), 0.0, 1 - rho),
        ):
            out.append(m + a * S * S / (a * a * S * S + var * lam) * (z - a * m))
        u, w = out
        return torch.stack([(u + w) / math.sqrt(2), (u - w) / math.sqrt(2)], dim=2)

    return model_fn


@pytest.mark.parametrize(
    "sampler",
    [
        DDPMSampler(clip_denoised=False),
        DDIMSampler(steps=1000, clip_denoised=False),  # enough steps to make the ODE error small
        DPMSolverSampler(steps=100, clip_denoised=False),
    ],
    ids=["ddpm", "ddim", "dpm++"],
)
def test_samplers_recover_the_data_distribution_under_correlated_noise(sampler):
    """Data frames are independent N(μ, s²); the samples must be too. A sampler that started
    from, or added, independent noise would leave frames correlated or mis-scaled."""
    diffusion = GaussianDiffusion(
        NoiseSchedule("linear"), prediction="x0", frame_noise_correlation=RHO
    )
    model_fn = correlated_optimal_x0(diffusion.schedule.alphas_cumprod, RHO)
    x = sampler.sample(
        diffusion, model_fn, (20_000, 1, 2, 1, 1), generator=torch.Generator().manual_seed(0)
    )
    mean, std, corr = frame_moments(x)
    # n = 40k values / 20k pairs: standard errors 0.0025 (mean), 0.0018 (std), 0.007 (corr).
    assert mean == pytest.approx(MU, abs=0.012)
    assert std == pytest.approx(S, abs=0.012)
    assert corr == pytest.approx(0, abs=0.03)
