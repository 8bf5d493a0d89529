"""Every use of a private Lightning attribute, in one place.

Lightning has no public API for these; each wrapper names what it relies on, so that a Lightning
release that moves one breaks here (and in ``tests/test_lightning_internals.py``), not deep in a
run. ``pyproject.toml`` pins the range of Lightning releases these were tested with.
"""

from __future__ import annotations

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import ClusterEnvironment


def attached_trainer(module: LightningModule) -> Trainer | None:
    """The trainer ``module`` is attached to, or None (``module.trainer`` raises instead)."""
    return module._trainer


def stop_after_this_step(trainer: Trainer) -> None:
    """Make the trainer stop after the current step, as Lightning does on SIGTERM (it then
    raises ``SIGTERMException`` from the loop, and ``on_exception`` callbacks run)."""
    trainer._signal_connector.received_sigterm = True


def hpc_checkpoint_path(trainer: Trainer) -> str:
    """The next ``<default_root_dir>/hpc_ckpt_<n>.ckpt``, which a requeued SLURM job resumes
    from on its own."""
    return trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)


def cluster_environment(trainer: Trainer) -> ClusterEnvironment:
    """The cluster environment Lightning detected (``SLURMEnvironment`` under SLURM)."""
    return trainer._accelerator_connector.cluster_environment


def wandb_offline_dir(logger: WandbLogger) -> str | None:
    """The folder of an offline wandb run that has started (for ``wandb sync``), else None."""
    if not (logger._offline and logger._experiment):
        return None
    return logger.experiment.dir.removesuffix("/files")


def averages_weights(callback: WeightAveraging) -> bool:
    """Whether a weight-averaging callback holds an averaged model (it does from ``setup`` of a
    fit on)."""
    return callback._average_model is not None


def swap_averaged_weights(callback: WeightAveraging, module: LightningModule) -> None:
    """Exchange the module's weights with the averaged ones, as the callback does at the start
    and the end of every validation."""
    callback._swap_models(module)


def trained_in_this_process(trainer: Trainer) -> bool:
    """False when the fit ran in processes Lightning spawned (``strategy=ddp_spawn``): this
    process then never trained, and its step counters stay where they were."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
