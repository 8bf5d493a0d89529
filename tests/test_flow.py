"""Rectified flow: the exact velocity of Gaussian data, the samplers' order of convergence,
diffusers' FlowMatchEulerDiscreteScheduler as a reference, the timestep densities."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from vdm.diffusion import DDIMSampler, GaussianDiffusion, NoiseSchedule
from vdm.diffusion.flow import FlowMatching, shift_for, shift_time
from vdm.diffusion.flow_samplers import FlowEulerSampler, FlowHeunSampler, flow_sigmas

MU, S = 0.3, 0.5  # data x0 ~ N(MU, S²) per element


def exact_velocity(x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
    """E[ε − x0 | x_t = x] for x0 ~ N(μ, s²): −μ + (t − (1 − t)s²)/σ_t² · (x − (1 − t)μ), with
    σ_t² = (1 − t)²s² + t² (the closed form the issue gives; t from the model's t · 1000)."""
    t = (model_t.double() / 1000).reshape(-1, *([1] * (x.dim() - 1)))
    var = (1 - t) ** 2 * S**2 + t**2
    return (-MU + (t - (1 - t) * S**2) / var * (x.double() - (1 - t) * MU)).to(x.dtype)


def sample_error(sampler, shift: float) -> float:
    """Max error against the exact ODE's end point μ + s·ε."""
    eps = torch.randn(3, 2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    out = sampler.sample(FlowMatching(shift=shift), exact_velocity, tuple(eps.shape), x_T=eps)
    return float((out.double() - (MU + S * eps.double())).abs().max())


@pytest.mark.parametrize(("shift", "heun_steps"), [(1.0, (16, 32, 64)), (3.0, (64, 128, 256))])
def test_euler_converges_at_first_order_and_heun_at_second(shift, heun_steps):
    """Heun reaches its asymptotic rate later with shift 3 (steps crowd at high noise)."""
    euler = [sample_error(FlowEulerSampler(steps=n), shift) for n in (8, 16, 32)]
    heun = [sample_error(FlowHeunSampler(steps=n), shift) for n in heun_steps]
    assert euler[-1] < 0.2 and heun[-1] < 3e-4
    for coarse, fine in itertools.pairwise(euler):
        assert 1.6 < coarse / fine < 2.6  # doubling the steps halves the error
    for coarse, fine in itertools.pairwise(heun):
        assert 3.0 < coarse / fine < 5.5  # ... and quarters Heun's


def test_the_time_grid_and_a_whole_euler_run_equal_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for shift in (1.0, 3.0, 0.5):
        for steps in (1, 4, 10, 25, 50):
            reference = FlowMatchEulerDiscreteScheduler(shift=shift)
            reference.set_timesteps(steps)
            np.testing.assert_allclose(
                flow_sigmas(steps, shift).numpy(), reference.sigmas.numpy(), atol=1e-5
            )

    def model(x, t):  # any smooth function of x and the model's time
        return torch.tanh(x) * (t / 1000).reshape(-1, 1, 1, 1, 1) - 0.3 * x

    x_T = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = FlowEulerSampler(steps=12).sample(FlowMatching(shift=3.0), model, x_T.shape, x_T=x_T)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(12)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(len(x))), t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_timestep_sampling_follows_its_density():
    n = 20_000
    generator = torch.Generator().manual_seed(0)
    t = FlowMatching("logit_normal", 0.5, 0.8).sample_timesteps(n, generator=generator).numpy()
    assert stats.kstest(np.log(t / (1 - t)), stats.norm(0.5, 0.8).cdf).pvalue > 0.01
    t = FlowMatching("uniform").sample_timesteps(n, generator=generator).numpy()
    assert stats.kstest(t, stats.uniform.cdf).pvalue > 0.01
    # Mode sampling: t = f(u) = 1 − u − s(cos²(πu/2) − 1 + u) decreases in u, so
    # P(t ≤ x) = 1 − f⁻¹(x); f⁻¹ by bisection.
    scale = 1.29
    t = FlowMatching("mode", mode_scale=scale).sample_timesteps(n, generator=generator).numpy()

    def f(u):
        return 1 - u - scale * (np.cos(np.pi / 2 * u) ** 2 - 1 + u)

    def cdf(x):
        lo, hi = np.zeros_like(x), np.ones_like(x)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = f(mid) > x
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return 1 - (lo + hi) / 2

    assert stats.kstest(t, cdf).pvalue > 0.01
    # Shifted uniform: P(shift(u) ≤ x) = x / (shift − (shift − 1)·x).
    t = FlowMatching("uniform", shift=3.0).sample_timesteps(n, generator=generator).numpy()
    assert stats.kstest(t, lambda x: x / (3.0 - 2.0 * x)).pvalue > 0.01


def test_the_path_target_and_time_conventions():
    flow = FlowMatching()
    x0, eps = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    t = torch.tensor([0.0, 1.0])
    x_t = flow.q_sample(x0, t, eps)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], eps[1])  # t = 1 is pure noise
    assert torch.equal(flow.target(x0, eps, t), eps - x0)
    t = torch.tensor([0.3, 0.8])
    torch.testing.assert_close(flow.predict_x0(flow.q_sample(x0, t, eps), t, eps - x0), x0)
    assert shift_time(torch.tensor(0.5), 3.0) == 0.75 and shift_for(8, 32, 32) == 1.0
    assert shift_for(16, 64, 64) == pytest.approx(math.sqrt(8))


def test_the_loss_is_the_velocity_error_and_skips_given_frames():
    flow = FlowMatching()
    x0, eps = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    t = torch.tensor([0.2, 0.7])
    seen = {}

    def perfect(x, model_t, context=None):
        seen["t"] = model_t
        return eps - x0

    loss, _, used = flow.training_loss(perfect, x0, t=t, noise=eps)
    assert loss == 0 and torch.equal(used, t) and torch.equal(seen["t"], t * 1000)
    given = torch.tensor([[True, False, False, True]] * 2)

    def wrong_on_given_frames(x, model_t, context=None):
        seen["t"] = model_t
        return torch.where(context[:, None, :, None, None], x0 * 7, eps - x0)

    loss, _, _ = flow.training_loss(wrong_on_given_frames, x0, t=t, noise=eps, context=given)
    assert loss == 0  # given frames are left out of the loss
    assert torch.equal(seen["t"], torch.where(given, 0.0, t[:, None] * 1000))


def test_a_sampler_of_the_other_process_is_a_clear_error():
    ddpm = GaussianDiffusion(NoiseSchedule(num_steps=10))
    with pytest.raises(ValueError, match="sampler=euler or sampler=heun"):
        DDIMSampler(steps=2).sample(FlowMatching(), exact_velocity, (1, 1, 1, 2, 2))
    with pytest.raises(ValueError, match="use sampler=ddim"):
        FlowEulerSampler(steps=2).sample(ddpm, exact_velocity, (1, 1, 1, 2, 2))


def test_given_frames_come_back_exactly_from_both_flow_samplers():
    video = torch.rand(2, 3, 4, 4, 4) * 2 - 1
    mask = torch.tensor([[True, True, False, False], [False, False, False, True]])

    def model(x, t, context=None):
        return torch.tanh(x)

    for sampler in (FlowEulerSampler(steps=3), FlowHeunSampler(steps=3)):
        out = sampler.sample(FlowMatching(), model, video.shape, context=(video, mask))
        assert torch.equal(out[0, :, :2], video[0, :, :2]) and torch.equal(
            out[1, :, 3], video[1, :, 3]
        )
