"""diffusers' schedulers as an independent reference for tables, spacings and samplers."""

import pytest
import torch
from gaussian_oracle import optimal_denoiser
from tiny_pipelines import COGVIDEOX_SCHEDULER

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


def cogvideox_schedule(tmp_path) -> tuple[NoiseSchedule, object]:
    """vdm's schedule as read from a saved ``CogVideoXDDIMScheduler`` (CogVideoX-2b / 5b's
    config), and that scheduler."""
    from vdm.published import scheduler_objective

    theirs = schedulers.CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
    theirs.save_pretrained(tmp_path / "scheduler")
    objective = scheduler_objective(tmp_path)
    assert objective["prediction"] == "v"
    return NoiseSchedule(**objective["schedule"]), theirs


def test_cogvideox_scheduler_table_is_read_exactly(tmp_path):
    ours, theirs = cogvideox_schedule(tmp_path)
    assert ours.snr_shift**2 == pytest.approx(3.0, rel=1e-15)
    assert theirs.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=1e-12)


def run_cogvideox_ddim(scheduler, model_fn, x, steps):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = scheduler.step(model_fn(x, t_batch), int(t), x, return_dict=False)[0]
    return x


class StrideDDIM(DDIMSampler):
    """DDIM stepping as diffusers' DDIM schedulers do: from t to ``t - T // steps``, whatever
    step comes next."""

    def intervals(self, diffusion):
        stride = diffusion.num_steps // self.steps
        return [(t, t - stride if t >= stride else None) for t in self.timesteps(diffusion)]


@pytest.mark.parametrize("steps", [50, 4, 3, 7])
def test_ddim_takes_cogvideox_ddim_steps_where_the_step_count_divides_t(tmp_path, steps):
    """CogVideoXPipeline steps CogVideoXDDIMScheduler (eta 0) from t to ``t - T // steps``. Where
    ``steps`` divides T = 1000 (CogVideoX's 50) that is the next step vdm visits and both walk
    the same path. Otherwise (3: 999 → 666 → 332) the scheduler moves x to ᾱ_333 and then calls
    the model at step 332, one step off; vdm moves to the step it calls the model at next.
    ``StrideDDIM`` takes the scheduler's steps and draws what it draws: that is the whole
    difference."""
    schedule, theirs = cogvideox_schedule(tmp_path)
    diffusion = GaussianDiffusion(schedule, prediction="v")
    model_fn = optimal_denoiser(schedule.alphas_cumprod, "v", 0.3, 0.5)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    expected = run_cogvideox_ddim(theirs, model_fn, x_T.clone(), steps)
    ours = DDIMSampler(steps=steps, eta=0.0, spacing="trailing", clip_denoised=False)
    got = ours.sample(diffusion, model_fn, x_T.shape, x_T=x_T)
    if 1000 % steps == 0:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    else:
        assert (got - expected).abs().max() > 1e-4
    strided = StrideDDIM(steps=steps, clip_denoised=False).sample(
        diffusion, model_fn, x_T.shape, x_T=x_T
    )
    torch.testing.assert_close(strided, expected, rtol=0, atol=1e-5)


def test_the_uniform_v_loss_is_the_cogvideox_lora_example_s_loss(tmp_path):
    """diffusers' examples/cogvideo/train_cogvideox_lora.py turns the v output into x̂0
    (``scheduler.get_velocity(output, x_t, t)``) and weighs its squared error by 1/(1 - ᾱ_t):
    that is the plain v-MSE, vdm's ``loss_weighting=uniform`` (finetune_cogvideox)."""
    schedule, theirs = cogvideox_schedule(tmp_path)
    diffusion = GaussianDiffusion(schedule, prediction="v", loss_weighting="uniform")
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(4, 2, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 400, 998, 999])  # 999: SNR 0
    _, per_sample, _ = diffusion.training_loss(lambda x, s: out, x0, t=t, noise=noise)
    x_t = theirs.add_noise(x0, noise, t)
    x0_pred = theirs.get_velocity(out, x_t, t)
    weights = (1 / (1 - theirs.alphas_cumprod[t])).view(-1, 1, 1, 1, 1)
    expected = (weights * (x0_pred - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(per_sample, expected.float(), rtol=1e-5, atol=1e-6)
