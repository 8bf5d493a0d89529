"""The task function end to end on CPU: tiny models, a few steps, every part of a run."""

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import CONF, compose_run, tiny_kl_vae, tiny_text_encoder, tiny_wan_vae
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny_pipelines import tiny_wan_pipeline

from vdm.cli.checks import ConfigError, check_train_config
from vdm.cli.train import run
from vdm.errors import UserError
from vdm.inference.build import fill_autoencoder_geometry
from vdm.training.build import TASK_CALLBACKS, build_callbacks, build_loggers, build_module


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key)][-1]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=unet3d_tiny", "diffusion.prediction=eps", "schedule=linear"],
        ["model=unet3d_tiny", "diffusion.prediction=v", "schedule=cosine"],
        ["model=unet3d_tiny", "diffusion.prediction=x0", "schedule=sigmoid"],
        ["model=transformer_tiny", "diffusion.prediction=eps", "schedule=scaled_linear"],
        [
            "model=transformer_tiny",
            "diffusion.prediction=v",
            "diffusion.loss_weighting=min_snr",
            "schedule=cosine",
            "schedule.zero_terminal_snr=true",
            "sampler=dpmpp",
        ],
        ["model=transformer_tiny", "diffusion.prediction=x0", "sampler=ddpm", "sampler.steps=4"],
    ],
    ids=[
        "unet-eps-linear",
        "unet-v-cosine",
        "unet-x0-sigmoid",
        "dit-eps-scaled",
        "dit-v-ztsnr-dpmpp",
        "dit-x0-ddpm",
    ],
)
def test_a_short_run_writes_checkpoints_samples_and_metrics(tmp_path, overrides):
    trainer = run(compose_run(tmp_path, *overrides))
    assert trainer.global_step == 4
    rows = metrics(tmp_path)
    assert math.isfinite(last_value(rows, "train/loss"))
    assert math.isfinite(last_value(rows, "val/loss"))
    assert any(r.get(f"train/loss_q{q}") for r in rows for q in range(4))
    for step in ("step_000002", "step_000004"):  # every validation, the last one included
        samples = tmp_path / "samples" / step
        assert (samples / "grid.gif").stat().st_size > 0
        assert len(list(samples.glob("sample_*.mp4"))) == 3  # one per class
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")  # plain data only
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["model"]["_target_"].startswith("vdm.models.")
    assert {"state_dict", "current_model_state", "optimizer_states", "lr_schedulers"} <= ckpt.keys()
    assert any(k.startswith("denoiser.") for k in ckpt["state_dict"])


@pytest.mark.parametrize(
    ("context", "accumulate", "diffusion", "latent", "text"),
    [
        ("none", 1, "ddpm", False, "none"),
        ("mixed", 1, "ddpm", False, "none"),
        ("mixed", 1, "ddpm", True, "tiny"),
        pytest.param("none", 2, "ddpm", False, "none", marks=pytest.mark.slow),
        pytest.param("mixed", 1, "flow", False, "none", marks=pytest.mark.slow),
    ],
)
def test_resumed_run_ends_exactly_where_the_uninterrupted_one_does(
    tmp_path, request, context, accumulate, diffusion, latent, text
):
    """Interrupt at step 3, mid-epoch (8 batches per epoch), with EMA updating from step 1.

    The interrupted run keeps the full run's LR schedule (total_steps=6), as a run killed at
    step 3 would have; a shorter max_steps alone would also shorten the cosine decay. With
    context=mixed each step's given frames are drawn from the step's seed too.
    With 2 batches per step the checkpoint still falls between steps (val_check_interval counts
    steps), and the second epoch starts in the middle of the run. Rectified flow draws its
    (logit-normal) times from the step's seed as DDPM draws its steps. On a VAE's latents, each
    step's posterior samples come from the step's seed too; with text, each step's caption
    dropout as well, and the tiny text encoder's weights (in the state dict) resume with the rest.
    """
    vae = [f"autoencoder.ckpt_path={request.getfixturevalue('vae_ckpt')}"] if latent else []
    common = [
        *(["autoencoder=vdm"] if latent else []),
        *vae,
        "callbacks.ema.update_starting_at_step=1",
        "trainer.val_check_interval=3",
        "lr_scheduler.total_steps=6",
        f"context={context}",
        f"trainer.accumulate_grad_batches={accumulate}",
        f"diffusion={diffusion}",
        f"text_encoder={text}",
    ]
    run(compose_run(tmp_path / "full", *common, "trainer.max_steps=6"))
    run(compose_run(tmp_path / "first", *common, "trainer.max_steps=3"))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(first)["global_step"] == 3
    run(compose_run(tmp_path / "resumed", *common, "trainer.max_steps=6", f"ckpt_path={first}"))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == full["global_step"] == 6
    assert any(k.startswith("text_encoder.") for k in full["state_dict"]) == (text == "tiny")
    for key in ("state_dict", "current_model_state"):  # EMA and training weights
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    for a, b in zip(
        full["optimizer_states"][0]["state"].values(),
        resumed["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert full["lr_schedulers"] == resumed["lr_schedulers"]


def test_a_run_folder_with_a_checkpoint_resumes_it_and_a_finished_one_trains_nothing(
    tmp_path, caplog
):
    """The same run folder again (a fixed run_name, experiment=shapes_vae): its last.ckpt is
    resumed through vdm's checks; at its max_steps nothing is trained or rewritten."""
    caplog.set_level(logging.INFO)
    run(compose_run(tmp_path, "trainer.max_steps=2"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    written = last.resolve().stat().st_mtime_ns
    assert run(compose_run(tmp_path, "trainer.max_steps=2")) is None
    assert last.resolve().stat().st_mtime_ns == written
    assert "the run is finished, nothing to train" in caplog.text
    caplog.clear()
    assert run(compose_run(tmp_path, "trainer.max_steps=4")).global_step == 4
    assert f"{last} exists: resuming this run folder's run" in caplog.text
    assert "previous `fit` call will be used" not in caplog.text
    assert load_checkpoint(last)["global_step"] == 4
    with pytest.raises(ValueError, match="holds another model"):
        run(compose_run(tmp_path, "model=transformer_tiny", "trainer.max_steps=6"))


def test_debug_fast_runs_on_a_folder_of_videos(tmp_path, shared_videos):
    """debug=fast's small rendered set is the shapes set's own keys; a folder keeps its files."""
    cfg = compose_run(tmp_path, "data=folder", f"data.root={shared_videos / 'real'}")
    assert "num_train" not in cfg.data
    assert run(cfg).global_step == 4
    shapes = compose_run(tmp_path / "shapes")
    assert (shapes.data.num_train, shapes.data.num_val) == (16, 4)


def test_resuming_from_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    run(compose_run(tmp_path / "unet", "trainer.max_steps=2"))
    ckpt = tmp_path / "unet" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="model"):
        run(compose_run(tmp_path / "dit", "model=transformer_tiny", f"ckpt_path={ckpt}"))
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        run(compose_run(tmp_path / "x", f"ckpt_path={tmp_path / 'missing.ckpt'}"))


def test_ddp_spawn_over_gloo_trains_two_ranks(tmp_path):
    # EMAWeightAveraging cannot be pickled into spawned processes (its avg_fn is a local
    # function); the command-line DDP (subprocess launcher) keeps it, see test_cli.py.
    trainer = run(
        compose_run(
            tmp_path,
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp_spawn",
            "trainer.max_steps=2",
            "~callbacks.ema",
        )
    )
    assert trainer.world_size == 2
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert (tmp_path / "samples" / "step_000002" / "grid.gif").is_file()


@pytest.mark.parametrize("num_classes", [3, 0], ids=["conditional", "unconditional"])
def test_wandb_offline_run_folder_holds_videos_and_metrics(tmp_path, monkeypatch, num_classes):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(compose_run(tmp_path, "logger=wandb", f"data.num_classes={num_classes}"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = list(runs[0].glob("files/media/videos/**/*"))
    assert any(p.suffix == ".gif" for p in media) and any(p.suffix == ".mp4" for p in media)
    assert list(runs[0].glob("run-*.wandb"))  # the metric history


def test_missing_data_root_is_one_line_naming_the_path(tmp_path):
    cfg = compose_run(
        tmp_path,
        "data=folder",
        f"data.root={tmp_path / 'nowhere'}",
        "model=unet3d_tiny",
        "logger=csv",
        fast=False,
    )
    with pytest.raises(FileNotFoundError, match="nowhere") as caught:
        run(cfg)
    assert "\n" not in str(caught.value)


def test_a_misspelt_key_is_named_by_hydra():
    with (
        initialize_config_dir(config_dir=str(CONF), version_base="1.3"),
        pytest.raises(ConfigCompositionException, match="max_step"),
    ):
        compose("train", overrides=["trainer.max_step=5"])


GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in CONF.iterdir()
    if group.is_dir() and group.name not in ("hydra", "paths")
    for option in group.glob("*.yaml")
)


def published_pipeline(family: str):
    """The builder of a tiny pipeline folder of ``family`` (tests/tiny_pipelines.py)."""

    def build(folder: Path) -> Path:
        pytest.importorskip("diffusers")
        pytest.importorskip("peft")
        import tiny_pipelines

        return getattr(tiny_pipelines, f"tiny_{family}_pipeline")(folder)

    return build


# The finetune presets' options, and the tiny pipeline each is composed with.
PUBLISHED = {"finetune_wan": published_pipeline("wan"),
             "finetune_cogvideox": published_pipeline("cogvideox"),
             "finetune_ltx": published_pipeline("ltx")}  # fmt: skip


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_option_of_every_group_composes_and_instantiates(
    tmp_path, request, shared_videos, group, option
):
    overrides = [f"{group}={option}"]
    if (group, option) in (
        ("autoencoder", "vdm"), ("experiment", "shapes_latent"), ("experiment", "shapes_t2v")
    ):  # fmt: skip
        overrides.append(f"autoencoder.ckpt_path={request.getfixturevalue('vae_ckpt')}")
    if (group, option) in (("text_encoder", "t5"), ("text_encoder", "clip")):
        overrides.append(f"text_encoder.path={tiny_text_encoder(tmp_path / option, option)}")
        overrides.append("text_encoder.max_length=16")
    if option == "t2v_latent":  # a frozen T5 and captions beside the SD VAE
        overrides.append(f"text_encoder.path={tiny_text_encoder(tmp_path / 't5')}")
        captions = tmp_path / "captions.csv"
        captions.write_text("path,caption\nBasketball/basketball.mp4,a man plays basketball\n")
        overrides.append(f"data.captions={captions}")
    if (group, option) == ("autoencoder", "diffusers"):
        overrides.append(f"autoencoder.path={tiny_kl_vae(tmp_path / 'kl')}")
    if (group, option) == ("model", "diffusers"):  # a published model needs its VAE and text
        wan = tiny_wan_pipeline(tmp_path / "wan_pipeline")
        overrides += [f"model.path={wan}", "autoencoder=diffusers", f"autoencoder.path={wan}",
                      "text_encoder=t5", f"text_encoder.path={wan}", "text_encoder.max_length=16",
                      "diffusion=flow", "data.num_classes=0", "data.clip_len=9"]  # fmt: skip
    if option in ("ucf101_latent", "t2v_latent"):  # the SD VAE's geometry: 8×8, 4 channels
        overrides.append(f"autoencoder.path={tiny_kl_vae(tmp_path / 'kl', levels=4)}")
    if option == "ucf101_wan_latent":
        overrides.append(f"autoencoder.path={tiny_wan_vae(tmp_path / 'wan')}")
    ucf101 = option.startswith("ucf101") or option == "t2v_latent"  # shapes recipes: the set
    if (group == "data" and option == "folder") or ucf101:
        overrides.append(f"data.root={shared_videos / 'real'}")
    if group in ("trainer", "experiment"):  # this machine has no GPU: build them on CPU
        overrides += [
            "trainer.accelerator=cpu",
            "trainer.strategy=auto",
            "trainer.devices=1",
            "trainer.precision=32-true",
        ]
    if ucf101 and option != "t2v_latent":  # t2v_latent is prompted, not labelled
        overrides += ["data.num_classes=7"]
    if (group, option) in (("sampler", "euler"), ("sampler", "heun")):
        overrides.append("diffusion=flow")  # flow samplers integrate a flow
    if option in PUBLISHED:  # a tiny pipeline folder of the preset's family, captions beside
        from tiny_pipelines import TEXT_LENGTH

        captions = tmp_path / "captions.csv"
        captions.write_text("path,caption\nBasketball/basketball.mp4,a man plays basketball\n")
        overrides += [f"model.path={PUBLISHED[option](tmp_path / option)}",
                      f"data.root={shared_videos / 'real'}", f"data.captions={captions}",
                      "model.dtype=float32", "text_encoder.dtype=float32",
                      f"text_encoder.max_length={TEXT_LENGTH}", "data.size=64",
                      "data.clip_len=9"]  # fmt: skip
    cfg = compose_run(tmp_path, *overrides, fast=False)
    if (group, option) == ("sampler", "checkpoint"):  # vdm.sample's and vdm.evaluate's only
        with pytest.raises(ConfigError, match="sampler=checkpoint picks a trained run's"):
            check_train_config(cfg)
        return
    if (group, option) == ("schedule", "published"):  # read from a model=diffusers folder
        with pytest.raises(UserError, match="schedule=published reads the schedule of a"):
            build_module(cfg)
        return
    fill_autoencoder_geometry(cfg)
    check_train_config(cfg)
    if group == "vae" or option == "reconstruction_videos":  # task=autoencoder's
        cfg.task = "autoencoder"

    def built(target: str) -> str:
        name = target.rsplit(".", 1)[1]
        return {"load_diffusers_denoiser": "DiffusersDenoiser"}.get(name, name)

    module = build_module(cfg)
    if cfg.task == "autoencoder":
        assert type(module.vae).__name__ == built(cfg.vae._target_)
        assert module.hparams["vae"] == OmegaConf.to_container(cfg.vae, resolve=True)
        assert "ReconstructionVideos" in {type(c).__name__ for c in build_callbacks(cfg)}
        return
    if group == "autoencoder":
        loaded = {
            "none": "PixelSpace",
            "vdm": "VdmAutoencoder",
            "diffusers": "DiffusersAutoencoder",
        }
        assert type(module.autoencoder).__name__ == loaded[option]
    if group == "text_encoder" or option in ("shapes_t2v", "t2v_latent"):
        encoder = {"none": None, "tiny": "TinyTextEncoder", "shapes_t2v": "TinyTextEncoder"}.get(
            option, "CachedTextEncoder"
        )  # t5, clip and t2v_latent: a frozen encoder behind its cache
        found = getattr(module, "text_encoder", None)
        assert (type(found).__name__ if found is not None else None) == encoder
        assert module.denoiser.text_dim == (found.dim if found is not None else 0)
    denoiser = built(cfg.model._target_)
    denoiser = {"load_diffusers_denoiser": "DiffusersDenoiser"}.get(denoiser, denoiser)  # loaded
    assert type(module.denoiser).__name__ == denoiser
    assert type(module.diffusion).__name__ == built(cfg.diffusion._target_)
    assert module.hparams["model"] == OmegaConf.to_container(cfg.model, resolve=True)
    data = instantiate(cfg.data)
    assert type(data).__name__ == built(cfg.data._target_)
    assert (data.clip_len, data.size, data.batch_size, data.seed) == (
        cfg.data.clip_len, cfg.data.size, cfg.data.batch_size, cfg.data.seed
    )  # fmt: skip
    callbacks = build_callbacks(cfg)
    expected = sorted(
        built(c._target_)
        for name, c in cfg.callbacks.items()
        if c is not None and name not in TASK_CALLBACKS["autoencoder"]
    )
    assert sorted(type(c).__name__ for c in callbacks) == expected
    for samples in (c for c in callbacks if type(c).__name__ == "SampleVideos"):
        assert type(samples.sampler).__name__ == built(cfg.sampler._target_)
    loggers = build_loggers(cfg)
    assert sorted(type(lg).__name__ for lg in loggers) == sorted(
        built(lg._target_) for lg in (cfg.get("logger") or {}).values() if lg is not None
    )
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert (trainer.max_steps, trainer.precision) == (cfg.trainer.max_steps, cfg.trainer.precision)


@pytest.mark.slow
def test_a_compiled_run_writes_plain_checkpoints_that_load_both_ways(tmp_path):
    """compile=true: the denoiser runs compiled, and checkpoints keep the plain model's names,
    so a plain model loads them and a compiled run resumes from a plain run's checkpoint."""
    from vdm.inference import load_run

    short = ["trainer.max_steps=2", "trainer.val_check_interval=2"]
    trainer = run(compose_run(tmp_path / "compiled", "compile=true", *short))
    compiled = trainer.lightning_module.denoiser
    assert compiled._compiled_call_impl is not None  # nn.Module.compile() took effect
    ckpt = tmp_path / "compiled" / "checkpoints" / "last.ckpt"
    stored = load_checkpoint(ckpt)
    names = [k for part in ("state_dict", "current_model_state") for k in stored[part]]
    assert names and not any("_orig_mod" in k for k in names)
    plain = load_run(ckpt).model.denoiser  # an uncompiled model takes them as they are
    x, t = torch.randn(1, 3, 8, 32, 32), torch.tensor([500])
    compiled.load_state_dict(plain.state_dict())
    compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), plain(x, t), rtol=1e-4, atol=1e-4)

    run(compose_run(tmp_path / "plain", *short))  # and back: compiled resumes a plain run
    plain_ckpt = tmp_path / "plain" / "checkpoints" / "last.ckpt"
    resumed = run(compose_run(tmp_path / "resumed", "compile=true", "trainer.max_steps=3",
                              "~callbacks.sample_videos", f"ckpt_path={plain_ckpt}"))  # fmt: skip
    assert resumed.global_step == 3


def test_val_check_interval_counts_optimizer_steps_under_accumulation():
    from omegaconf import OmegaConf

    from vdm.training.build import steps_as_batches

    def batches(interval, accumulate):
        cfg = OmegaConf.create(
            {"val_check_interval": interval, "accumulate_grad_batches": accumulate}
        )
        return steps_as_batches(cfg)

    assert batches(3, 2) == {"val_check_interval": 6}  # Lightning counts batches
    assert batches(3, 1) == {} and batches(0.5, 4) == {}  # a fraction of an epoch stays
