"""diffusers' schedulers as an independent reference for tables, spacings and samplers."""

import pytest
import torch
from gaussian_oracle import optimal_denoiser

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import DDIMSampler, DPMSolverSampler, timestep_schedule
from vdm.diffusion.schedule import NoiseSchedule

schedulers = pytest.importorskip("diffusers.schedulers")

DIFFUSERS_NAME = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
    "sigmoid": "sigmoid",
}


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("kind", list(DIFFUSERS_NAME))
def test_alphas_cumprod_match_diffusers(kind, zero_snr):
    ours = NoiseSchedule(kind, 1000, 1e-4, 0.02, zero_terminal_snr=zero_snr)
    theirs = schedulers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=DIFFUSERS_NAME[kind],
        rescale_betas_zero_snr=zero_snr,
    )
    # diffusers keeps float32 tables; ours are float64.
    assert torch.allclose(ours.alphas_cumprod.float(), theirs.alphas_cumprod, atol=2e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 333, 1000])
def test_timestep_spacing_matches_diffusers(spacing, steps):
    theirs = schedulers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    theirs.set_timesteps(steps)
    assert timestep_schedule(1000, steps, spacing) == theirs.timesteps.tolist()


def _run_diffusers(scheduler, model_fn, x):
    for t in scheduler.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = scheduler.step(model_fn(x, t_batch), t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_matches_diffusers_ddim(prediction):
    diffusion = GaussianDiffusion(NoiseSchedule("linear"), prediction=prediction)
    model_fn = optimal_denoiser(diffusion.schedule.alphas_cumprod, prediction, 0.3, 0.5)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    theirs = schedulers.DDIMScheduler(
        num_train_timesteps=1000,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction],
    )
    theirs.set_timesteps(25)
    expected = _run_diffusers(theirs, model_fn, x_T.clone())
    got = DDIMSampler(steps=25, clip_denoised=False).sample(diffusion, model_fn, x_T.shape, x_T=x_T)
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_dpm_solver_matches_diffusers_dpmsolver_multistep(prediction):
    diffusion = GaussianDiffusion(
        NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012), prediction=prediction
    )
    model_fn = optimal_denoiser(diffusion.schedule.alphas_cumprod, prediction, 0.3, 0.5)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    theirs = schedulers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction],
    )
    theirs.set_timesteps(20)  # >= 15 steps: diffusers keeps second order until the last step
    expected = _run_diffusers(theirs, model_fn, x_T.clone())
    got = DPMSolverSampler(steps=20, clip_denoised=False).sample(
        diffusion, model_fn, x_T.shape, x_T=x_T
    )
    assert torch.allclose(got, expected, atol=1e-4)
