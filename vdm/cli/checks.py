"""One pass over a composed config before any work starts: each bad value is one line naming the
key, its value and what is allowed, before data is rendered or a process is spawned."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vdm.autoencoders.base import frame_count_near, latent_frame_count
from vdm.cli.optimization_checks import check_optimization
from vdm.errors import UserError
from vdm.inference.build import fill_published_objective, is_flow, is_published
from vdm.training.build import is_autoencoder_task


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and what is allowed."""


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def at_least(cfg: DictConfig, key: str, minimum: int | float, what: str) -> None:
    value = _get(cfg, key)
    if value is not None and (not isinstance(value, int | float) or value < minimum):
        raise ConfigError(f"{key}={value}: must be a number >= {minimum} ({what}).")


def check_guidance(key: str, value: float | None) -> None:
    """Classifier-free guidance scale: ≥ 0 (0 = unconditional, 1 = conditional only)."""
    if value is not None and (not isinstance(value, int | float) or value < 0):
        raise ConfigError(
            f"{key}={value}: must be >= 0 (0 = the unconditional model, 1 = the conditional "
            "model alone, above 1 = guided)."
        )


def model_divisors(model: DictConfig) -> tuple[int, int]:
    """What the frame size and the clip length must be divisible by for this denoiser."""
    target = str(model.get("_target_", ""))
    if target.endswith("UNet3D"):
        factor = int(model.get("patch_size", 1)) * 2 ** (len(model.get("channel_mult", [1])) - 1)
        return factor, 1
    if target.endswith("SpaceTimeTransformer"):
        return int(model.get("patch_size", 1)), int(model.get("temporal_patch_size", 1))
    return 1, 1


def check_sampler_fits(sampler: DictConfig, diffusion: DictConfig, where: str) -> None:
    """Flow samplers for a flow model, DDPM samplers for a DDPM one; ``where`` names whose
    process it is (this run's, or the checkpoint's)."""
    flow_sampler = ".flow_samplers." in str(sampler.get("_target_", ""))
    if flow_sampler == is_flow(diffusion):
        return
    name = str(sampler._target_).rsplit(".", 1)[-1]
    if flow_sampler:
        raise ConfigError(
            f"sampler={name} integrates a rectified flow, but {where} is DDPM: use sampler=ddim, "
            "ddpm or dpmpp (or diffusion=flow to train a flow)."
        )
    raise ConfigError(
        f"sampler={name} runs a DDPM reverse process, but {where} is rectified flow: use "
        "sampler=euler or sampler=heun."
    )


def check_writable(key: str, folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` and write a file in it, or fail in one line naming ``key``."""
    path = Path(folder).expanduser()
    probe = path / f".vdm-write-test-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"{key}={folder} is not a writable folder ({error.strerror or error}): pick another "
            "(hydra.run.dir=..., or VDM_LOG_DIR=... for every run)."
        ) from None


def check_train_config(cfg: DictConfig) -> None:
    """Check what ``python train.py`` would otherwise find out late (or deep in a library)."""
    task = _get(cfg, "task")
    if task not in ("diffusion", "autoencoder", None):
        raise ConfigError(f"task={task}: use task=diffusion (a denoiser) or task=autoencoder "
                          "(vdm's video VAE).")  # fmt: skip
    check_optimization(cfg)
    for key, minimum, what in (
        ("data.size", 1, "frame height and width in pixels"),
        ("data.clip_len", 1, "frames per training clip"),
        ("data.frame_stride", 1, "take every n-th frame"),
        ("data.batch_size", 1, "clips per batch on each device"),
        ("data.num_workers", 0, "0 decodes in the main process"),
        ("data.num_train", 1, "clips to render"),
        ("data.num_val", 1, "clips to render"),
        ("trainer.max_steps", 1, "optimizer steps"),
        ("trainer.accumulate_grad_batches", 1, "batches per optimizer step"),
        ("callbacks.sample_videos.num_samples", 1, "clips per validation"),
        ("callbacks.sample_videos.batch_size", 1, "clips per forward pass"),
    ):
        at_least(cfg, key, minimum, what)
    if is_autoencoder_task(cfg):
        check_vae_config(cfg)
    else:
        check_denoiser_config(cfg)
    check_data_config(cfg)
    try:
        output_dir = _get(cfg, "paths.output_dir")
    except ValueError:  # ${hydra:...} outside a Hydra run: nothing to check
        output_dir = None
    if output_dir:
        check_writable("hydra.run.dir", output_dir)


def check_vae_config(cfg: DictConfig) -> None:
    """``task=autoencoder``: the frame size fits the VAE's downsampling; no compile."""
    mult = _get(cfg, "vae.channel_mult") or [1]
    factor, size = 2 ** (len(mult) - 1), _get(cfg, "data.size")
    if size is not None and size % factor:
        raise ConfigError(
            f"data.size={size}: the VAE (vae.channel_mult has {len(mult)} levels) needs a "
            f"multiple of {factor}: e.g. data.size={max(factor, size // factor * factor)}."
        )
    if cfg.get("compile"):
        raise ConfigError("compile=true compiles a denoiser; task=autoencoder has none: drop it.")


def check_latent_geometry(cfg: DictConfig) -> tuple[int | None, int | None]:
    """The size and clip length the denoiser sees (in latents with an autoencoder), after
    checking that the autoencoder takes ``data.size`` and ``data.clip_len``."""
    size, clip_len = _get(cfg, "data.size"), _get(cfg, "data.clip_len")
    spatial = _get(cfg, "autoencoder.spatial_factor") or 1
    temporal = _get(cfg, "autoencoder.temporal_factor") or 1
    causal = bool(_get(cfg, "autoencoder.causal"))
    if size is not None and size % spatial:
        raise ConfigError(
            f"data.size={size}: the autoencoder (spatial factor {spatial}) needs a multiple of "
            f"{spatial}: e.g. data.size={max(spatial, size // spatial * spatial)}."
        )
    latent_size = None if size is None else size // spatial
    if clip_len is None or temporal == 1:
        return latent_size, clip_len
    latent_len = latent_frame_count(clip_len, temporal, causal)
    if latent_len is None:
        rule = f"takes 1 + {temporal}·k frames" if causal else f"needs a multiple of {temporal}"
        raise ConfigError(
            f"data.clip_len={clip_len}: the {'causal ' if causal else ''}autoencoder (temporal "
            f"factor {temporal}) {rule}: e.g. data.clip_len="
            f"{frame_count_near(clip_len, temporal, causal)}."
        )
    return latent_size, latent_len


def check_published_config(cfg: DictConfig) -> None:
    """``model=diffusers``: the folder holds a transformer vdm fine-tunes; ``lora`` needs such a
    model."""
    if not is_published(cfg):
        if cfg.get("lora") is not None:
            raise ConfigError(
                "lora=... adapts a published transformer (model=diffusers, e.g. "
                "experiment=finetune_wan): vdm's own denoisers train every weight; drop lora."
            )
        return
    from vdm.published import family_of, transformer_folder

    path = _get(cfg, "model.path")
    _, config = transformer_folder(path)
    family_of(config["_class_name"], f"model.path={path}")


def check_denoiser_config(cfg: DictConfig) -> None:
    """The denoiser, its process and its sample-video sampler fit each other and the data."""
    check_published_config(cfg)
    size, clip_len = check_latent_geometry(cfg)
    fill_published_objective(cfg)  # the folder's scheduler's, or one line where they differ
    spatial = _get(cfg, "autoencoder.spatial_factor") or 1
    space, time = model_divisors(cfg.model)
    latent = spatial > 1 or (_get(cfg, "autoencoder.temporal_factor") or 1) > 1
    if size is not None and size % space:
        model = cfg.model._target_.rsplit(".", 1)[-1]
        need = space * spatial
        nearest = max(need, size * spatial // need * need)
        what = (
            f"a latent size that is a multiple of {space}" if latent else f"a multiple of {space}"
        )
        its = f"; the latent size is {size}" if latent else ""
        raise ConfigError(
            f"data.size={size * spatial}: {model} needs {what} (its patch size and "
            f"downsampling{its}): e.g. data.size={nearest}."
        )
    if clip_len is not None and clip_len % time:
        given = _get(cfg, "data.clip_len")
        if latent:
            raise ConfigError(
                f"data.clip_len={given}: model.temporal_patch_size={time} needs a latent clip "
                f"length that is a multiple of {time} (it is {clip_len}): change data.clip_len "
                "or model.temporal_patch_size."
            )
        raise ConfigError(
            f"data.clip_len={given}: model.temporal_patch_size={time} needs a multiple of "
            f"{time}: e.g. data.clip_len={max(time, given // time * time)}."
        )
    process = "diffusion=flow" if is_flow(cfg.diffusion) else "diffusion=ddpm"
    if cfg.sampler.get("from_checkpoint"):
        raise ConfigError(
            "sampler=checkpoint picks a trained run's sampler in vdm.sample and vdm.evaluate; "
            "training needs one: sampler=ddim, ddpm or dpmpp (DDPM), euler or heun (flow)."
        )
    check_sampler_fits(cfg.sampler, cfg.diffusion, process)
    steps = _get(cfg, "sampler.steps")
    # A flow's time is continuous (any number of steps); DDPM has schedule.num_steps.
    num_steps = None if is_flow(cfg.diffusion) else _get(cfg, "schedule.num_steps")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"sampler.steps={steps}: must be an integer >= 1.")
    if steps is not None and num_steps is not None and steps > num_steps:
        raise ConfigError(
            f"sampler.steps={steps}: must be in [1, {num_steps}] (schedule.num_steps)."
        )


def check_data_config(cfg: DictConfig) -> None:
    """Split files come in pairs and exist."""
    split_files = _get(cfg, "data.split_files") or {}
    given = sorted(k for k, v in split_files.items() if v is not None)
    if given and given != ["train", "val"]:
        raise ConfigError(
            f"data.split_files.{given[0]} is set alone: set both data.split_files.train and "
            "data.split_files.val (e.g. UCF-101's trainlist01.txt and testlist01.txt)."
        )
    for split in given:
        path = Path(split_files[split]).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.split_files.{split}={path}: no such file.")
    check_guidance("callbacks.sample_videos.guidance_scale",
                   _get(cfg, "callbacks.sample_videos.guidance_scale"))  # fmt: skip


def check_sample_config(cfg: DictConfig) -> None:
    """Check the keys ``conf/sample.yaml`` and ``conf/evaluate.yaml`` share."""
    for key, minimum, what in (
        ("num_samples", 1, "clips to sample"),
        ("batch_size", 1, "clips per forward pass"),
        ("frames", 1, "frames per clip"),
        ("num_clips", 1, "real clips to score"),
        ("num_real", 1, "real clips for FVD"),
        ("context.frames", 1, "frames given"),
        ("extend.window", 2, "frames per window"),
        ("extend.overlap", 1, "frames each window is given"),
        ("fps", 1, "frame rate of the written files"),
        ("upscale", 1, "nearest-neighbour factor"),
    ):
        at_least(cfg, key, minimum, what)
    check_guidance("guidance_scale", _get(cfg, "guidance_scale"))
    steps = _get(cfg, "sampler.steps")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"sampler.steps={steps}: must be an integer >= 1.")
