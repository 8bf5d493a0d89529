"""`run(cfg)`: seed → data → model → callbacks → loggers → trainer → fit, from a Hydra config;
`main()`: the `vdm-train` command (and `python train.py`, `python -m vdm.train`)."""

from __future__ import annotations

import contextlib
import logging
import math
import netrc
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from lightning import Callback, LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, WeightAveraging
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from vdm.checkpoint import AtomicCheckpointIO, load_checkpoint, model_config_mismatch
from vdm.config_check import check_train_config, is_flow
from vdm.data.reader import VideoReadError
from vdm.diffusion.context import ContextMasks
from vdm.diffusion.flow import FlowMatching
from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import Sampler
from vdm.guards import CheckpointOnSignal, NonFiniteTrainingError, exit_code
from vdm.module import VideoDiffusionModule

log = logging.getLogger(__name__)

# The configs ship inside the package (conf/ at the repository root links here), so an
# installed vdm finds them wherever it runs.
CONF = Path(__file__).resolve().parent / "conf"


def build_diffusion(cfg: DictConfig) -> GaussianDiffusion | FlowMatching:
    """The process of ``cfg.diffusion``: DDPM over the noise schedule of ``cfg.schedule``, or
    rectified flow (which has no schedule)."""
    log.info("Instantiating diffusion <%s>", cfg.diffusion._target_)
    if is_flow(cfg.diffusion):
        return instantiate(cfg.diffusion)
    log.info("Instantiating schedule <%s>", cfg.schedule._target_)
    return instantiate(cfg.diffusion, schedule=instantiate(cfg.schedule))


def build_model(cfg: DictConfig) -> nn.Module:
    """The denoiser of ``cfg.model`` (``UNet3D`` or ``SpaceTimeTransformer``)."""
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model, _convert_="all")
    log.info("Model has %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def build_sampler(cfg: DictConfig) -> Sampler:
    """The sampler of ``cfg.sampler``."""
    log.info("Instantiating sampler <%s>", cfg.sampler._target_)
    return instantiate(cfg.sampler)


def build_module(cfg: DictConfig) -> VideoDiffusionModule:
    """The LightningModule, storing the resolved plain config for checkpoints."""
    return VideoDiffusionModule(
        denoiser=build_model(cfg),
        diffusion=build_diffusion(cfg),
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        label_dropout=cfg.module.label_dropout,
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg, resolve=True),
        context_masks=build_context_masks(cfg),
    )


def compile_denoiser(module: VideoDiffusionModule) -> None:
    """``torch.compile`` the denoiser in place (``nn.Module.compile``): training, validation
    and sampling run the compiled code, while parameter names, and so checkpoints, stay those
    of the plain model (no ``_orig_mod.`` prefix): compiled and plain runs load each other's."""
    log.info("Compiling the denoiser with torch.compile (the first steps are slow)")
    module.denoiser.compile()


def build_context_masks(cfg: DictConfig) -> ContextMasks | None:
    """The training clips' given-frame mixture of ``cfg.context`` (None for ``context=none``)."""
    masks = OmegaConf.select(cfg, "context.masks")
    if masks is None:
        return None
    log.info("Instantiating context masks <%s>", masks._target_)
    return instantiate(masks)


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """One callback per entry of ``cfg.callbacks`` (null entries are off).

    Weight averaging goes last, so that at the end of validation the other callbacks (sample
    videos) still see the averaged weights before it swaps the training weights back.
    """
    callbacks = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is not None and "_target_" in conf:
            log.info("Instantiating callback %s <%s>", name, conf._target_)
            callbacks.append(instantiate(conf))
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
        loggers.append(instantiate(conf))
    return loggers


@rank_zero_only
def log_run_info(cfg: DictConfig, module: VideoDiffusionModule, trainer: Trainer) -> None:
    """Log the resolved config and the parameter counts to every logger."""
    params = sum(p.numel() for p in module.denoiser.parameters())
    trainable = sum(p.numel() for p in module.denoiser.parameters() if p.requires_grad)
    info = {"model/params": params, "model/params_trainable": trainable}
    for logger in trainer.loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **info})


@rank_zero_only
def print_wandb_sync(loggers: list[Logger]) -> None:
    """Say how to upload an offline wandb run (the last thing a user reads)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._offline and logger._experiment:
            log.info("wandb ran offline; upload with: wandb sync %s", logger.experiment.dir[:-6])


def check_resume(cfg: DictConfig) -> None:
    """Fail early, in one line, when ``ckpt_path`` cannot resume this run's model."""
    if not cfg.get("ckpt_path"):
        return
    stored = load_checkpoint(cfg.ckpt_path)["hyper_parameters"]["model"]
    differs = model_config_mismatch(stored, OmegaConf.to_container(cfg.model, resolve=True))
    if differs:
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path} holds another model (model.{', model.'.join(differs)} "
            f"differ; it has {stored['_target_']}): resume with the model config that wrote it."
        )


def run(cfg: DictConfig) -> Trainer:
    """Train as ``cfg`` says and return the trainer (its ``callback_metrics`` hold the last
    logged values)."""
    check_train_config(cfg)
    check_resume(cfg)
    seed_everything(cfg.seed, workers=True)
    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule: LightningDataModule = instantiate(cfg.data)
    module = build_module(cfg)
    if cfg.get("compile"):
        compile_denoiser(module)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger (logger=null)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **steps_as_batches(cfg.trainer),
    )
    log_run_info(cfg, module, trainer)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except SIGTERMException:  # Lightning's stop after a signal: a SystemExit with status 0
        on_signal = next((c for c in callbacks if isinstance(c, CheckpointOnSignal)), None)
        signum = (on_signal.signum if on_signal else None) or signal.SIGTERM
        log.error("Stopped by %s at step %d", signal.Signals(signum).name, trainer.global_step)
        raise SystemExit(exit_code(signum)) from None
    finally:
        print_wandb_sync(loggers)
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()  # close the run so the jobs of a multirun stay apart
    return trainer


@contextlib.contextmanager
def user_errors_in_one_line() -> Iterator[None]:
    """Turn the errors that bad input raises (a missing folder or file, a wrong value) into one
    line on stderr and exit status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback instead."""
    try:
        yield
    except (FileNotFoundError, ValueError, VideoReadError, NonFiniteTrainingError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"vdm: error: {error}", file=sys.stderr)
        sys.exit(1)


def optimized_value(cfg: DictConfig, trainer: Trainer) -> float | None:
    """The value of ``cfg.optimized_metric`` at the end of the run, for Hydra's sweepers (an
    Optuna search minimises it); None when the key is null. A metric the run did not log fails
    a sweep trial (the sweeper needs a number) but only warns in a single run."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in trainer.callback_metrics:
        known = ", ".join(sorted(trainer.callback_metrics)) or "none"
        message = (
            f"optimized_metric={name} was not logged by this run (logged: {known}): pick one "
            "of those, e.g. optimized_metric=val/loss."
        )
        if sweep_trial(cfg):
            raise ValueError(message)
        log.warning(message)
        return None
    value = float(trainer.callback_metrics[name])
    return value if math.isfinite(value) else float("inf")


def null_groups_as_deletions(argv: list[str]) -> list[str]:
    """``logger=null`` turns a config group off, as users expect; Hydra spells that ``~logger``
    on the command line and rejects the first form."""
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    return [f"~{a[:-5]}" if a.endswith("=null") and a[:-5] in groups else a for a in argv]


def sweep_trial(cfg: DictConfig) -> bool:
    """Whether this run is one trial of a Hydra sweep that optimises a metric."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN and bool(cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    with user_errors_in_one_line():
        try:
            trainer = run(cfg)
        except NonFiniteTrainingError as error:
            if not sweep_trial(cfg):
                raise
            # A learning rate that diverges is an answer for the search, not a reason to stop it.
            log.error("This trial diverged; the sweeper gets inf. %s", error)
            return float("inf")
        return optimized_value(cfg, trainer)


def main() -> None:
    """``vdm-train [overrides]``: train as conf/train.yaml and the overrides say."""
    sys.argv = null_groups_as_deletions(sys.argv)
    hydra_main()


if __name__ == "__main__":
    main()
