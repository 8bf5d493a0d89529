"""The pieces of a training run that a run config names: the Lightning module, the training
clips' frame masks, callbacks and loggers, each built with Hydra's ``instantiate``."""

from __future__ import annotations

import logging
import netrc
import os

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from vdm.diffusion.context import ContextMasks
from vdm.inference.build import (
    build_autoencoder,
    build_diffusion,
    build_model,
    build_text_encoder,
    instantiate_config,
)
from vdm.training.autoencoder_module import AutoencoderModule
from vdm.training.lightning_internals import wandb_offline_dir
from vdm.training.module import VideoDiffusionModule

log = logging.getLogger(__name__)


def is_autoencoder_task(cfg: DictConfig) -> bool:
    """Whether the run trains vdm's video VAE (``task=autoencoder``) rather than a denoiser."""
    return OmegaConf.select(cfg, "task", default="diffusion") == "autoencoder"


def build_module(cfg: DictConfig) -> VideoDiffusionModule | AutoencoderModule:
    """The LightningModule of ``cfg.task``, storing the resolved plain config for checkpoints."""
    if is_autoencoder_task(cfg):
        log.info("Instantiating VAE <%s>", cfg.vae._target_)
        return AutoencoderModule(
            vae=instantiate_config(cfg.vae, "vae", _convert_="all"),
            **optimization(cfg),
            reconstruction=cfg.vae_loss.reconstruction,
            kl_weight=cfg.vae_loss.kl_weight,
            seed=cfg.seed,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    autoencoder = build_autoencoder(cfg)  # first: it fills in the latent geometry of the config
    return VideoDiffusionModule(
        denoiser=build_model(cfg),
        diffusion=build_diffusion(cfg),
        **optimization(cfg),
        label_dropout=cfg.module.label_dropout,
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg, resolve=True),
        context_masks=build_context_masks(cfg),
        autoencoder=autoencoder,
        text_encoder=build_text_encoder(cfg),
        caption_dropout=OmegaConf.select(cfg, "module.caption_dropout", default=0.1),
    )


def optimization(cfg: DictConfig) -> dict:
    """The module's ``optimizer`` and ``lr_scheduler`` factories (Hydra partials)."""
    scheduler = cfg.get("lr_scheduler")
    return {
        "optimizer": instantiate_config(cfg.optimizer, "optimizer"),
        "lr_scheduler": instantiate_config(scheduler, "lr_scheduler") if scheduler else None,
    }


def build_context_masks(cfg: DictConfig) -> ContextMasks | None:
    """The training clips' given-frame mixture of ``cfg.context`` (None for ``context=none``)."""
    masks = OmegaConf.select(cfg, "context.masks")
    if masks is None:
        return None
    log.info("Instantiating context masks <%s>", masks._target_)
    return instantiate_config(masks, "context.masks")


# Callbacks that only one task uses: the other leaves them out.
TASK_CALLBACKS = {
    "diffusion": ("sample_videos", "ema"),  # a VAE has no samples and is used as trained
    "autoencoder": ("reconstruction_videos",),
}


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """One callback per entry of ``cfg.callbacks`` (null entries are off), less those of the
    other task (:data:`TASK_CALLBACKS`).

    Weight averaging goes last, so that at the end of validation the other callbacks (sample
    videos) still see the averaged weights before it swaps the training weights back.
    """
    callbacks = []
    other_task = TASK_CALLBACKS["diffusion" if is_autoencoder_task(cfg) else "autoencoder"]
    for name, conf in (cfg.get("callbacks") or {}).items():
        if name in other_task:
            continue
        if conf is not None and "_target_" in conf:
            log.info("Instantiating callback %s <%s>", name, conf._target_)
            callbacks.append(instantiate_config(conf, f"callbacks.{name}"))
    return sorted(callbacks, key=lambda c: isinstance(c, WeightAveraging))


def steps_as_batches(trainer_cfg: DictConfig) -> dict:
    """Lightning counts an integer ``val_check_interval`` in batches; vdm's configs mean
    optimizer steps. With ``accumulate_grad_batches = k`` they differ k-fold, and validating
    (and checkpointing) in the middle of a step would drop its accumulated gradient on resume."""
    interval = trainer_cfg.get("val_check_interval")
    accumulate = trainer_cfg.get("accumulate_grad_batches") or 1
    if not isinstance(interval, int) or accumulate == 1:
        return {}
    return {"val_check_interval": interval * accumulate}


def wandb_api_key_configured() -> bool:
    """A key in ``WANDB_API_KEY`` or in ``~/.netrc`` (where ``wandb login`` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """One logger per entry of ``cfg.logger``; wandb goes offline when no API key is set."""
    loggers = []
    for name, conf in (cfg.get("logger") or {}).items():
        if conf is None or "_target_" not in conf:
            continue
        if conf._target_.endswith("WandbLogger") and conf.get("offline") is None:
            with open_dict(conf):
                conf.offline = not wandb_api_key_configured()
        log.info("Instantiating logger %s <%s>", name, conf._target_)
        loggers.append(instantiate_config(conf, f"logger.{name}"))
    return loggers


@rank_zero_only
def log_run_info(cfg: DictConfig, module: LightningModule, trainer: Trainer) -> None:
    """Log the resolved config and the parameter counts (of the trained network: a frozen
    autoencoder is not the module's) to every logger."""
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    info = {"model/params": params, "model/params_trainable": trainable}
    for logger in trainer.loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **info})


@rank_zero_only
def print_wandb_sync(loggers: list[Logger]) -> None:
    """Say how to upload an offline wandb run (the last thing a user reads)."""
    for logger in loggers:
        folder = wandb_offline_dir(logger) if isinstance(logger, WandbLogger) else None
        if folder:
            log.info("wandb ran offline; upload with: wandb sync %s", folder)
