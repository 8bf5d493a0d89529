"""The schedule, sampler and diffusion config groups: every key reaches the object it configures."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from vdm.inference.build import build_diffusion, build_sampler

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


def test_the_published_schedule_needs_a_published_model():
    from vdm.errors import UserError

    with pytest.raises(UserError, match=r"schedule\.kind is null: schedule=published reads"):
        build_diffusion(compose_train("schedule=published"))


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
            "schedule=linear",
            "schedule.beta_start=0.001",
            "schedule.beta_end=0.03",
            "schedule.num_steps=200",
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
            "diffusion.frame_noise_correlation=0.25",
        )
    )
    assert diffusion.prediction == "x0"
    assert diffusion.loss_weighting == "min_snr"
    assert diffusion.min_snr_gamma == 2.5
    assert diffusion.frame_noise_correlation == 0.25


def test_every_sampler_option_and_key_reaches_the_sampler():
    assert isinstance(build_sampler(compose_train().sampler), DDIMSampler)  # the default
    ddpm = build_sampler(
        compose_train(
            "sampler=ddpm",
            "sampler.steps=100",
            "sampler.spacing=linspace",
            "sampler.clip_denoised=false",
        ).sampler
    )
    assert isinstance(ddpm, DDPMSampler)
    assert (ddpm.steps, ddpm.spacing, ddpm.clip_denoised) == (100, "linspace", False)
    ddim = build_sampler(
        compose_train("sampler.steps=25", "sampler.eta=0.5", "sampler.spacing=leading").sampler
    )
    assert (ddim.steps, ddim.eta, ddim.spacing, ddim.clip_denoised) == (25, 0.5, "leading", True)
    dpm = build_sampler(
        compose_train("sampler=dpmpp", "sampler.steps=12", "sampler.order=1").sampler
    )
    assert isinstance(dpm, DPMSolverSampler) and (dpm.steps, dpm.order) == (12, 1)


def test_an_impossible_combination_names_the_fix():
    cfg = compose_train("schedule.zero_terminal_snr=true", "diffusion.prediction=eps")
    with pytest.raises(Exception, match="prediction=v"):
        build_diffusion(cfg)
    # min_snr_plus_one is for v and x0: with eps the error names both ways out
    with pytest.raises(Exception, match=r"prediction=v.*loss_weighting=min_snr"):
        build_diffusion(
            compose_train("diffusion.prediction=eps", "diffusion.loss_weighting=min_snr_plus_one")
        )
    eps = build_diffusion(
        compose_train("diffusion.prediction=eps", "diffusion.loss_weighting=min_snr")
    )
    assert eps.prediction == "eps" and eps.loss_weighting == "min_snr"


def test_every_unet3d_key_reaches_the_model():
    from vdm.inference.build import build_model
    from vdm.models.layers import RMSNorm

    model = build_model(
        compose_train(
            "model=unet3d",
            "data.channels=1",
            "data.num_classes=5",
            "model.base_channels=8",
            "model.channel_mult=[1,2,2,2]",
            "model.num_res_blocks=2",
            "model.attention_resolutions=[2]",
            "model.heads=2",
            "model.dropout=0.3",
            "model.qk_norm=true",
            "model.gradient_checkpointing=true",
        )
    )
    assert model.conv_in.in_channels == 1 and model.conv_out.out_channels == 1
    assert model.cond.label.table.num_embeddings == 6  # 5 classes + the null label
    assert model.conv_in.out_channels == 8
    assert [len(level) for level in model.down] == [2, 2, 2, 2]
    assert [level[0].res.conv1.out_channels for level in model.down] == [8, 16, 16, 16]
    assert [level[0].spatial_attn is not None for level in model.down] == [
        False,
        True,
        False,
        False,
    ]
    assert model.down[1][0].spatial_attn.attn.heads == 2
    assert model.down[0][0].res.dropout.p == 0.3
    assert isinstance(model.down[0][0].temporal_attn.attn.q_norm, RMSNorm)
    assert model.gradient_checkpointing


def test_every_transformer_key_reaches_the_model():
    from vdm.inference.build import build_model
    from vdm.models.layers import RMSNorm

    model = build_model(
        compose_train(
            "model=transformer",
            "data.channels=1",
            "data.num_classes=0",
            "model.patch_size=2",
            "model.temporal_patch_size=2",
            "model.hidden_size=64",
            "model.depth=3",
            "model.heads=8",
            "model.mlp_ratio=2.0",
            "model.dropout=0.2",
            "model.qk_norm=true",
            "model.gradient_checkpointing=true",
        )
    )
    assert model.patch_embed.in_features == 1 * 2 * 2 * 2  # channels · pt · p · p
    assert model.proj_out.out_features == 1 * 2 * 2 * 2
    assert model.cond.label is None  # unconditional
    assert model.hidden_size == 64 and len(model.blocks) == 3
    block = model.blocks[0]
    assert block.spatial_attn.heads == 8 and block.mlp.fc1.out_features == 128
    assert block.mlp.dropout.p == 0.2 and isinstance(block.temporal_attn.k_norm, RMSNorm)
    assert model.gradient_checkpointing


def test_every_context_key_reaches_the_masks_and_the_model():
    from vdm.inference.build import build_model
    from vdm.training.build import build_context_masks

    assert build_context_masks(compose_train()) is None  # context=none: as before masks
    assert build_model(compose_train("model=unet3d_tiny")).frame_conditioning is False
    cfg = compose_train(
        "context=mixed",
        "model=transformer_tiny",
        "context.masks.none=1",
        "context.masks.prefix=2",
        "context.masks.interpolate=3",
        "context.masks.random=4",
    )
    masks = build_context_masks(cfg)
    assert masks.shares.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert build_model(cfg).frame_conditioning is True


def test_masks_on_a_model_without_frame_conditioning_name_the_key(tmp_path):
    from conftest import compose_run

    from vdm.training.build import build_module

    cfg = compose_run(tmp_path, "context=mixed", "model.frame_conditioning=false")
    with pytest.raises(ValueError, match="model.frame_conditioning=true"):
        build_module(cfg)
