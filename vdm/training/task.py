"""The training task: seed → data → model → callbacks → loggers → trainer → fit, from a composed
run config. ``vdm-train`` calls it after checking the config; a notebook or a test can call it
with a config from Hydra's compose API."""

from __future__ import annotations

import functools
import logging
import signal
import warnings

import torch
from lightning import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from vdm.errors import UserError
from vdm.files.checkpoint import AtomicCheckpointIO
from vdm.inference.build import instantiate_config
from vdm.inference.model import compile_denoiser
from vdm.training.build import (
    build_callbacks,
    build_loggers,
    build_module,
    log_run_info,
    print_wandb_sync,
    steps_as_batches,
)
from vdm.training.guards import CheckpointOnSignal
from vdm.training.latent_cache import cached_training_set
from vdm.training.lightning_internals import trained_in_this_process

log = logging.getLogger(__name__)


FRESH_START_WARNINGS = (
    r".*(ckpt_path=None\)` was called without a model|there is no last checkpoint)"
)


class RunEndedEarly(UserError):
    """Training ended before ``trainer.max_steps`` with neither an error nor a signal: nothing to
    report as success (e.g. Lightning's "No training batches")."""


def reached_its_end(trainer: Trainer) -> bool:
    """Whether a fit that returned normally did what was asked: ``max_steps`` optimizer steps,
    or ``max_epochs`` epochs, or a callback (early stopping) asked it to stop. (Under
    ``ddp_spawn`` the spawned processes trained and said so themselves.)"""
    if 0 < trainer.max_steps <= trainer.global_step or not trained_in_this_process(trainer):
        return True
    epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    return 0 < epochs <= trainer.current_epoch or trainer.should_stop


class RunStopped(Exception):
    """A signal (SIGTERM, SIGINT, SIGUSR1) ended the run after a step, with a checkpoint of it.

    Attributes:
        signum: the signal's number.
        step: the optimizer step the run stopped at.
    """

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


def use_latent_cache(cfg: DictConfig, datamodule: LightningDataModule, module) -> None:
    """With an autoencoder and ``latents.cache=true``, train on the training set's latent cache
    (built in the data module's setup, by every rank); else the module encodes every batch."""
    autoencoder = getattr(module, "autoencoder", None)
    if autoencoder is None or autoencoder.fingerprint is None:
        return
    options = dict(cfg.get("latents") or {})
    if not options.pop("cache", False):
        log.info("latents.cache=false: encoding every training batch with the autoencoder")
        return
    datamodule.training_set_as = functools.partial(
        cached_training_set, autoencoder=autoencoder, options=options
    )


def fit(cfg: DictConfig) -> Trainer:
    """Train as ``cfg`` says and return the trainer (its ``callback_metrics`` hold the last
    logged values).

    Raises:
        RunStopped: a signal stopped the run (its checkpoint is written).
        RunEndedEarly: the fit returned before its end without an error or a signal.
    """
    seed_everything(cfg.seed, workers=True)
    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule: LightningDataModule = instantiate_config(cfg.data, "data")
    module = build_module(cfg)
    use_latent_cache(cfg, datamodule, module)
    if cfg.get("compile"):
        compile_denoiser(module)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger (logger=null)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: Trainer = instantiate_config(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **steps_as_batches(cfg.trainer),
    )
    log_run_info(cfg, module, trainer)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    try:
        with warnings.catch_warnings():
            # A fresh run (the CLI resumes a folder's own last.ckpt explicitly): Lightning looks
            # for a "last" checkpoint anyway because of CheckpointOnSignal and warns it found none.
            warnings.filterwarnings("ignore", message=FRESH_START_WARNINGS)
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except SIGTERMException:  # Lightning's stop after a signal: a SystemExit with status 0
        on_signal = next((c for c in callbacks if isinstance(c, CheckpointOnSignal)), None)
        signum = (on_signal.signum if on_signal else None) or signal.SIGTERM
        raise RunStopped(signum, trainer.global_step) from None
    finally:
        print_wandb_sync(loggers)
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()  # close the run so the jobs of a multirun stay apart
    if not reached_its_end(trainer):
        raise RunEndedEarly(
            f"the run ended at step {trainer.global_step} of trainer.max_steps="
            f"{trainer.max_steps} without an error or a signal: see the lines above (e.g. 'No "
            "training batches'); it is not a finished run."
        )
    return trainer
