"""Callbacks that keep a run from losing work or from reporting success when it failed.

- :class:`NonFiniteGuard`: a non-finite loss or gradient norm stops the run before the update
  that would spoil the weights (or skips that update), and no checkpoint with a non-finite
  tensor is ever written.
- :class:`CheckpointOnSignal`: SIGTERM, SIGINT and SIGUSR1 end the run after the current step
  with a checkpoint of that step, which resumes exactly; under SLURM, SIGUSR1 also requeues.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vdm.errors import UserError
from vdm.files.checkpoint import nonfinite_weights
from vdm.training.lightning_internals import (
    cluster_environment,
    hpc_checkpoint_path,
    stop_after_this_step,
)

log = logging.getLogger(__name__)

NONFINITE_MODES = ("stop", "skip")


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or gradient; the message says where and what to do."""


class NonFiniteGuard(Callback):
    """Checks every training step's loss and gradient norm, on every rank, before the update.

    ``mode="stop"`` (the default) ends the run at the first non-finite step with
    :class:`NonFiniteTrainingError`, naming the step and the last finite loss; the update is not
    applied, so the weights (and the newest checkpoint) stay finite. ``mode="skip"`` drops that
    step's update instead (its gradients are discarded), counts it, and stops only after
    ``max_skips`` non-finite steps in a row. With ``16-mixed`` precision an overflowing gradient
    is the loss scaler's to skip; only a non-finite loss counts then.

    Logs ``train/grad_norm`` (before clipping) and ``train/nonfinite_steps`` (skipped so far).
    Whatever the mode, a checkpoint holding a non-finite tensor is refused.

    Args:
        mode: ``stop`` or ``skip``.
        max_skips: non-finite steps in a row that ``skip`` tolerates before it stops.
    """

    def __init__(self, mode: str = "stop", max_skips: int = 10) -> None:
        if mode not in NONFINITE_MODES:
            raise UserError(
                f"callbacks.nonfinite.mode={mode!r}: use one of {', '.join(NONFINITE_MODES)}."
            )
        if max_skips < 1:
            raise UserError(f"callbacks.nonfinite.max_skips={max_skips}: must be >= 1.")
        self.mode, self.max_skips = mode, max_skips
        self.skipped = 0  # non-finite steps so far
        self.in_a_row = 0
        self.last_finite: tuple[int, float] | None = None  # (step, loss)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        loss = getattr(pl_module, "last_loss", None)
        grads = [
            torch.linalg.vector_norm(p.grad) for p in pl_module.parameters() if p.grad is not None
        ]
        norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
        loss_ok = loss is None or bool(torch.isfinite(loss))
        grads_ok = bool(torch.isfinite(norm)) or trainer.precision == "16-mixed"
        # Every rank must take the same branch: all of them stop, or all skip.
        bad = trainer.strategy.reduce_boolean_decision(not (loss_ok and grads_ok), all=False)
        step = trainer.global_step
        pl_module.log("train/grad_norm", norm, batch_size=1)
        if not bad:
            self.in_a_row = 0
            if loss is not None:
                self.last_finite = (step, float(loss))
            pl_module.log("train/nonfinite_steps", float(self.skipped), batch_size=1)
            return
        self.skipped += 1
        self.in_a_row += 1
        what = "loss" if not loss_ok else "gradient norm"
        value = float(loss) if not loss_ok else float(norm)
        if self.mode == "stop" or self.in_a_row >= self.max_skips:
            raise NonFiniteTrainingError(self.message(step, what, value))
        log.warning("Non-finite %s (%s) at step %d: update skipped (%d in a row)",
                    what, value, step, self.in_a_row)  # fmt: skip
        for p in pl_module.parameters():
            p.grad = None  # the optimizer leaves parameters without a gradient untouched
        pl_module.log("train/nonfinite_steps", float(self.skipped), batch_size=1)

    def message(self, step: int, what: str, value: float) -> str:
        last = (
            f"the last finite loss was {self.last_finite[1]:.4g} at step {self.last_finite[0]}"
            if self.last_finite
            else "no step had a finite loss"
        )
        streak = f" ({self.in_a_row} in a row)" if self.mode == "skip" else ""
        return (
            f"non-finite {what} ({value}) at step {step}{streak}; {last}. The update was not "
            "applied and no checkpoint of it was written: lower optimizer.lr, keep "
            "trainer.gradient_clip_val, or set callbacks.nonfinite.mode=skip."
        )

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict):
        bad = nonfinite_weights(checkpoint)
        if bad:
            raise NonFiniteTrainingError(
                f"refusing to write a checkpoint at step {trainer.global_step}: {len(bad)} "
                f"tensors are not finite ({', '.join(bad[:3])}); the newest finite checkpoint "
                "is kept."
            )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)


class CheckpointOnSignal(OnExceptionCheckpoint):
    """Ends the run after the current step when a signal asks, with a checkpoint of that step.

    Lightning turns SIGTERM into a stop after the current step (``SIGTERMException``); this
    callback makes SIGINT (Ctrl-C) and SIGUSR1 do the same instead of interrupting mid-step,
    and saves ``<dirpath>/interrupted-step-XXXXXX.ckpt``, which ``last.ckpt`` then points to.

    Under SLURM with Lightning's auto-requeue (``SLURMEnvironment``, on by default), SIGUSR1 is
    the requeue signal (``#SBATCH --signal=SIGUSR1@90``): the step's checkpoint goes to
    ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` instead, ``scontrol requeue <job>`` is called, and
    the requeued job (same run folder, see :mod:`vdm.conf.resolvers`) resumes from it on its own.
    Lightning's own handler saves at the moment the signal lands, possibly mid-step; saving at
    the step's end is what makes the resumed run exact.

    The run then exits with ``128 + the signal number`` (143 for SIGTERM, 130 for SIGINT, 138
    for SIGUSR1): :attr:`signum` holds it. A second Ctrl-C interrupts at once. Other exceptions
    (a bug, a non-finite loss) write nothing.

    Args:
        dirpath: the checkpoint folder (``<run dir>/checkpoints``).
    """

    def __init__(self, dirpath: str | os.PathLike[str]) -> None:
        super().__init__(dirpath, filename="interrupted")
        self.signum: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning has installed its SIGTERM handler by now, and restores every handler it
        # found (ours not among them) when fit ends.
        self.signum = None

        def stop_at_step_end(signum, frame) -> None:
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.signum = signum
            log.info("Received %s: stopping after this step", signal.Signals(signum).name)
            stop_after_this_step(trainer)

        lightning_sigterm = signal.getsignal(signal.SIGTERM)

        def remember_sigterm(signum, frame) -> None:
            self.signum = signum
            if callable(lightning_sigterm):
                lightning_sigterm(signum, frame)

        signal.signal(signal.SIGINT, stop_at_step_end)
        # Replaces Lightning's SLURM handler too, which would save mid-step (see above).
        signal.signal(signal.SIGUSR1, stop_at_step_end)
        signal.signal(signal.SIGTERM, remember_sigterm)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pass  # keep the checkpoint (OnExceptionCheckpoint would delete it)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self.signum = self.signum or signal.SIGTERM
        if self.signum == signal.SIGUSR1 and slurm_requeues(trainer):
            path = hpc_checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            rank_zero_only(log.info)("Saved %s for the requeued job", path)
            if trainer.is_global_zero:
                requeue_slurm_job()
            return
        path = Path(self.dirpath) / f"interrupted-step-{trainer.global_step:06d}.ckpt"
        trainer.save_checkpoint(path)
        link_last(trainer, path)
        rank_zero_only(log.info)("Saved %s; resume with ckpt_path=%s", path, path)


def slurm_requeues(trainer: Trainer) -> bool:
    """Whether this run is a SLURM job that Lightning would requeue (``auto_requeue``)."""
    environment = cluster_environment(trainer)
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (this array task), as Lightning's SLURM handler does."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    else:
        job = os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:
        log.error("SLURM job %s not requeued: scontrol is not on PATH", job)
        return
    if result.returncode == 0:
        log.info("Requeued SLURM job %s", job)
    else:
        log.error("scontrol requeue %s failed (%d): %s", job, result.returncode,
                  result.stderr.strip())  # fmt: skip


def link_last(trainer: Trainer, path: Path) -> None:
    """Point ``last.ckpt`` beside ``path`` at it (a relative link, as ModelCheckpoint makes)."""
    if not trainer.is_global_zero:
        return
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if checkpoint is None or not checkpoint.save_last:
        return
    last = path.parent / "last.ckpt"
    if last.is_symlink() or last.exists():
        last.unlink()
    os.symlink(path.name, last)
