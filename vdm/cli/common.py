"""What ``vdm-sample`` and ``vdm-evaluate`` share: loading the checkpoint their config names and
the sampler it picks."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vdm.cli.checks import check_sampler_fits
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.inference.build import build_sampler
from vdm.inference.model import compile_denoiser
from vdm.inference.run import LoadedRun, load_run, resolve_device


def load_configured_run(cfg: DictConfig, command: str) -> LoadedRun:
    """The run of ``cfg.ckpt_path`` on ``cfg.device``, compiled if ``cfg.compile``."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError(
            f"ckpt_path is missing: python -m {command} ckpt_path=<run dir>/checkpoints/last.ckpt"
        )
    loaded = load_run(
        cfg.ckpt_path,
        resolve_device(cfg.device),
        cfg.get("autoencoder_path") or None,
        cfg.get("text_encoder_path") or None,
        cfg.get("model_path") or None,
    )
    if cfg.get("compile"):
        compile_denoiser(loaded.model)
    return loaded


def sampler_config(cfg: DictConfig, loaded: LoadedRun) -> DictConfig:
    """``sampler=checkpoint`` (the default): the run's own sampler, with ``sampler.steps`` if set;
    any other choice, checked to fit the run's process (DDPM or flow)."""
    if cfg.sampler.get("from_checkpoint"):
        return loaded.sampler_config(steps=cfg.sampler.get("steps"))
    check_sampler_fits(cfg.sampler, loaded.config.diffusion, f"ckpt_path={cfg.ckpt_path}")
    return cfg.sampler


def sampler_for(cfg: DictConfig, loaded: LoadedRun) -> SamplingLoop:
    """The sampler of :func:`sampler_config`."""
    return build_sampler(sampler_config(cfg, loaded))
