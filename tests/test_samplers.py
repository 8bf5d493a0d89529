"""Samplers: timestep spacing, exactness on Gaussian data, edge cases and guidance."""

import itertools

import pytest
import torch
from gaussian_oracle import marginal, optimal_denoiser
from rich.progress import Progress

from vdm.diffusion import sampling_loop
from vdm.diffusion.flow import FlowMatching
from vdm.diffusion.flow_samplers import FlowHeunSampler
from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    guided,
    timestep_schedule,
)
from vdm.diffusion.schedule import NoiseSchedule

MU, S = 0.3, 0.5


# -- timestep spacing --------------------------------------------------------------------------


def test_spacings_match_diffusers_published_tables():
    # Lin et al. 2023, Table 2, and diffusers' timestep_spacing docs (T = 1000, 10 steps).
    assert timestep_schedule(1000, 10, "leading") == list(range(900, -1, -100))
    assert timestep_schedule(1000, 10, "trailing") == list(range(999, 0, -100))
    assert timestep_schedule(1000, 10, "linspace") == [
        999,
        888,
        777,
        666,
        555,
        444,
        333,
        222,
        111,
        0,
    ]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 7, 100, 1000])
def test_every_spacing_gives_distinct_descending_in_range_steps(spacing, num_steps):
    for steps in sorted({1, 2, 3, 7, num_steps // 3, num_steps - 1, num_steps} - {0}):
        if steps > num_steps:
            continue
        ts = timestep_schedule(num_steps, steps, spacing)
        assert len(ts) == steps, (steps, ts)
        assert all(a > b for a, b in itertools.pairwise(ts))
        assert ts[-1] >= 0 and ts[0] < num_steps
    assert timestep_schedule(num_steps, num_steps, spacing) == list(range(num_steps - 1, -1, -1))


def test_bad_step_counts_and_spacings_are_clear_errors():
    with pytest.raises(ValueError, match="sampler.steps"):
        timestep_schedule(100, 0)
    with pytest.raises(ValueError, match="sampler.steps"):
        timestep_schedule(100, 101)
    with pytest.raises(ValueError, match="sampler.spacing"):
        timestep_schedule(100, 10, "uniform")
    with pytest.raises(ValueError, match="sampler.order"):
        DPMSolverSampler(order=3)


# -- exactness on Gaussian data ----------------------------------------------------------------


def output_distribution(sampler, diffusion, mu=MU, s=S):
    """Mean and std of a deterministic sampler's output when x_T has the exact marginal.

    With the optimal denoiser of Gaussian data every deterministic sampler is an affine map
    x_T ↦ A·x_T + B, so two runs (x_T = 0 and 1) give the output distribution exactly.
    """
    model_fn = optimal_denoiser(diffusion.schedule.alphas_cumprod, diffusion.prediction, mu, s)
    x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = sampler.sample(diffusion, model_fn, (2, 1), x_T=x_T).double()
    B, A = out[0].item(), (out[1] - out[0]).item()
    m, sd = marginal(diffusion.schedule.alphas_cumprod, sampler.timesteps(diffusion)[0], mu, s)
    return B + A * m, abs(A) * sd


DETERMINISTIC = {
    "ddim": lambda n: DDIMSampler(steps=n, eta=0.0, clip_denoised=False),
    "dpm++1": lambda n: DPMSolverSampler(steps=n, order=1, clip_denoised=False),
    "dpm++2m": lambda n: DPMSolverSampler(steps=n, order=2, clip_denoised=False),
}


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_deterministic_samplers_converge_to_the_data_distribution(name, kind, prediction):
    diffusion = GaussianDiffusion(NoiseSchedule(kind), prediction=prediction)
    errors = []
    for steps in (5, 20, 100, 1000):
        mean, std = output_distribution(DETERMINISTIC[name](steps), diffusion)
        errors.append(abs(mean - MU) + abs(std - S))
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 2e-3, errors


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_dpm_solver_2m_beats_first_order_at_equal_steps(prediction):
    diffusion = GaussianDiffusion(NoiseSchedule("linear"), prediction=prediction)
    for steps, gain in ((10, 1.2), (20, 2.0), (50, 5.0)):
        _, std1 = output_distribution(DETERMINISTIC["dpm++1"](steps), diffusion)
        _, std2 = output_distribution(DETERMINISTIC["dpm++2m"](steps), diffusion)
        assert abs(std2 - S) * gain < abs(std1 - S), steps
    _, std = output_distribution(DETERMINISTIC["dpm++2m"](20), diffusion)
    assert std == pytest.approx(S, abs=0.025)  # 20 steps is already "enough"


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_ancestral_sampling_matches_mean_and_std(prediction):
    diffusion = GaussianDiffusion(NoiseSchedule("linear"), prediction=prediction)
    model_fn = optimal_denoiser(diffusion.schedule.alphas_cumprod, prediction, MU, S)
    g = torch.Generator().manual_seed(0)
    x = DDPMSampler(clip_denoised=False).sample(diffusion, model_fn, (50_000,), generator=g)
    # Standard errors at n = 50k: 0.0022 (mean), 0.0016 (std).
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, abs=0.01)


def test_ddim_with_eta_one_over_every_step_is_ddpm():
    """σ(η=1) is DDPM's posterior variance and the means agree, so with the same noise the two
    chains coincide step for step."""
    diffusion = GaussianDiffusion(NoiseSchedule("cosine", num_steps=100), prediction="eps")
    model_fn = optimal_denoiser(diffusion.schedule.alphas_cumprod, "eps", MU, S)
    ddpm = DDPMSampler().sample(
        diffusion, model_fn, (256,), generator=torch.Generator().manual_seed(3)
    )
    ddim = DDIMSampler(steps=100, eta=1.0).sample(
        diffusion, model_fn, (256,), generator=torch.Generator().manual_seed(3)
    )
    assert torch.allclose(ddpm, ddim, atol=1e-5)


def test_dpm_solver_first_order_is_ddim():
    diffusion = GaussianDiffusion(NoiseSchedule("linear"), prediction="v")
    model_fn = optimal_denoiser(diffusion.schedule.alphas_cumprod, "v", MU, S)
    x_T = torch.randn(512, generator=torch.Generator().manual_seed(1))
    a = DPMSolverSampler(steps=15, order=1).sample(diffusion, model_fn, (512,), x_T=x_T)
    b = DDIMSampler(steps=15).sample(diffusion, model_fn, (512,), x_T=x_T)
    assert torch.allclose(a, b, atol=1e-5)


# -- edge cases --------------------------------------------------------------------------------


ALL_SAMPLERS = {
    "ddpm": lambda n, **kw: DDPMSampler(steps=n, **kw),
    "ddim": lambda n, **kw: DDIMSampler(steps=n, **kw),
    "ddim-eta1": lambda n, **kw: DDIMSampler(steps=n, eta=1.0, **kw),
    "dpm++": lambda n, **kw: DPMSolverSampler(steps=n, **kw),
}


@pytest.mark.parametrize("name", list(ALL_SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 10, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_last_step_lands_on_the_clean_estimate(name, steps, spacing):
    """A model that always predicts x0 = c must return exactly c, whatever the path."""
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=50), prediction="x0")
    calls = []

    def model_fn(x, t):
        calls.append(t[0].item())
        return torch.full_like(x, 0.37)

    sampler = ALL_SAMPLERS[name](steps, spacing=spacing, clip_denoised=False)
    out = sampler.sample(
        diffusion, model_fn, (3, 2, 4, 5, 5), generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (3, 2, 4, 5, 5) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-6)
    assert calls == timestep_schedule(50, steps, spacing)  # one model call per step


@pytest.mark.parametrize("name", list(ALL_SAMPLERS))
def test_clipping_keeps_samples_in_range_and_is_optional(name):
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=20), prediction="x0")
    far = lambda x, t: torch.full_like(x, 5.0)  # noqa: E731
    clipped = ALL_SAMPLERS[name](5).sample(diffusion, far, (4, 3))
    assert torch.allclose(clipped, torch.ones(4, 3))
    free = ALL_SAMPLERS[name](5, clip_denoised=False).sample(diffusion, far, (4, 3))
    assert torch.allclose(free, torch.full((4, 3), 5.0))


@pytest.mark.parametrize("name", list(ALL_SAMPLERS))
def test_same_seed_same_sample(name):
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=30))
    model_fn = optimal_denoiser(diffusion.schedule.alphas_cumprod, "eps", MU, S)

    def run(seed):
        return ALL_SAMPLERS[name](10).sample(
            diffusion, model_fn, (8,), generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


PROGRESS_CASES = {  # sampler, its process, steps, model calls per step
    "ddim": (DDIMSampler(steps=4), GaussianDiffusion(NoiseSchedule(num_steps=10)), 4, 1),
    "dpm++": (DPMSolverSampler(steps=3), GaussianDiffusion(NoiseSchedule(num_steps=10)), 3, 1),
    "heun": (FlowHeunSampler(steps=3), FlowMatching(), 3, 2),
}


@pytest.mark.parametrize("name", list(PROGRESS_CASES))
def test_progress_bar_advances_once_per_step(monkeypatch, name):
    sampler, process, steps, calls_per_step = PROGRESS_CASES[name]
    bars = []

    class RecordingProgress(Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(sampling_loop, "Progress", RecordingProgress)
    calls = []

    def model_fn(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    for progress in (True, False):
        sampler.sample(process, model_fn, (2, 3), progress=progress)
    shown, hidden = bars
    assert not shown.disable and hidden.disable  # progress=True is what turns the bar on
    (task,) = shown.tasks
    assert task.description == type(sampler).__name__
    assert task.total == steps and task.completed == steps and task.finished
    assert len(calls) == 2 * steps * calls_per_step


# -- classifier-free guidance ------------------------------------------------------------------


class CountingModel(torch.nn.Module):
    """out = x·(1 + label) + t: conditional and unconditional outputs differ in a known way."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, labels):
        self.batches.append(x.shape[0])
        return x * (1 + labels.view(-1, 1).float()) + t.view(-1, 1).float()


def test_guidance_scale_one_is_the_conditional_model():
    model = CountingModel()
    x, t, labels = torch.randn(4, 3), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 1])
    assert torch.equal(guided(model, labels, 1.0, null_label=3)(x, t), model(x, t, labels))


def test_guidance_runs_both_halves_as_one_batch_and_extrapolates():
    model = CountingModel()
    x, t, labels = torch.randn(4, 3), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 1])
    out = guided(model, labels, 3.0, null_label=3)(x, t)
    assert model.batches == [8]
    cond = x * (1 + labels.view(-1, 1)) + t.view(-1, 1)
    uncond = x * 4 + t.view(-1, 1)
    assert torch.allclose(out, uncond + 3.0 * (cond - uncond))


def test_guided_model_drives_a_sampler():
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=20), prediction="x0")

    def model(x, t, labels):  # predicts x0 = label / 10, or 0 for the null label 5
        return (labels.float() / 10).where(labels != 5, 0.0).view(-1, 1).expand_as(x)

    labels = torch.tensor([1, 2, 3])
    out = DDIMSampler(steps=5).sample(diffusion, guided(model, labels, 2.0, 5), (3, 4))
    assert torch.allclose(out[:, 0], 2.0 * labels.float() / 10)
