"""The schedule, sampler and diffusion config groups: every key reaches the object it configures."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from vdm.train import build_diffusion, build_sampler

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("option", "kind", "beta_end"),
    [
        ("linear", "linear", 0.02),
        ("cosine", "cosine", None),
        ("scaled_linear", "scaled_linear", 0.012),
        ("sigmoid", "sigmoid", 0.02),
    ],
)
def test_every_schedule_option_builds_its_kind(option, kind, beta_end):
    diffusion = build_diffusion(compose_train(f"schedule={option}"))
    assert isinstance(diffusion, GaussianDiffusion)
    assert diffusion.schedule.kind == kind and diffusion.num_steps == 1000
    if beta_end is not None:
        assert diffusion.schedule.betas[-1].item() == pytest.approx(beta_end, rel=0.01)


def test_every_schedule_key_reaches_the_schedule():
    cfg = compose_train(
        "schedule.num_steps=200",
        "schedule.beta_start=0.001",
        "schedule.beta_end=0.03",
        "schedule.zero_terminal_snr=true",
        "diffusion.prediction=v",
    )
    schedule = build_diffusion(cfg).schedule
    assert len(schedule.betas) == 200
    assert schedule.alphas_cumprod[-1].item() == 0.0  # zero_terminal_snr
    plain = build_diffusion(
        compose_train(
            "schedule.beta_start=0.001", "schedule.beta_end=0.03", "schedule.num_steps=200"
        )
    ).schedule
    assert plain.betas[0].item() == pytest.approx(0.001)
    assert plain.betas[-1].item() == pytest.approx(0.03)


def test_every_diffusion_key_reaches_the_process():
    diffusion = build_diffusion(
        compose_train(
            "diffusion.prediction=x0",
            "diffusion.loss_weighting=min_snr",
            "diffusion.min_snr_gamma=2.5",
        )
    )
    assert diffusion.prediction == "x0"
    assert diffusion.loss_weighting == "min_snr"
    assert diffusion.min_snr_gamma == 2.5


def test_every_sampler_option_and_key_reaches_the_sampler():
    assert isinstance(build_sampler(compose_train()), DDIMSampler)  # the default
    ddpm = build_sampler(
        compose_train(
            "sampler=ddpm",
            "sampler.steps=100",
            "sampler.spacing=linspace",
            "sampler.clip_denoised=false",
        )
    )
    assert isinstance(ddpm, DDPMSampler)
    assert (ddpm.steps, ddpm.spacing, ddpm.clip_denoised) == (100, "linspace", False)
    ddim = build_sampler(
        compose_train("sampler.steps=25", "sampler.eta=0.5", "sampler.spacing=leading")
    )
    assert (ddim.steps, ddim.eta, ddim.spacing, ddim.clip_denoised) == (25, 0.5, "leading", True)
    dpm = build_sampler(compose_train("sampler=dpmpp", "sampler.steps=12", "sampler.order=1"))
    assert isinstance(dpm, DPMSolverSampler) and (dpm.steps, dpm.order) == (12, 1)


def test_an_impossible_combination_names_the_fix():
    cfg = compose_train("schedule.zero_terminal_snr=true")  # with the default eps prediction
    with pytest.raises(Exception, match="prediction=v"):
        build_diffusion(cfg)
