"""Progress as log lines, for runs whose output is a file (SLURM, nohup, CI), where the progress
bar prints nothing."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable

from lightning import Callback, LightningModule, Trainer

from vdm.errors import UserError

log = logging.getLogger(__name__)


def progress_line(
    step: int, total: int | None, loss: float | None, steps_per_s: float | None
) -> str:
    """``step 12/1600 (1%) loss 0.2134 2.41 it/s ETA 0:10:59``.

    The ETA is the remaining steps at ``steps_per_s`` (validation not included). An unknown
    value is written ``-`` (the loss before any step logged it, the rate when no time was
    measured, the total and the ETA of a run without a known number of steps).

    Args:
        step: optimizer steps done.
        total: optimizer steps of the whole run, or None.
        loss: the latest training loss, or None.
        steps_per_s: optimizer steps per second since the last line, or None.
    """
    done = f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}/-"
    loss_text = f"loss {loss:.4f}" if loss is not None else "loss -"
    if not steps_per_s:
        return f"{done} {loss_text} - it/s ETA -"
    eta = "-"
    if total:
        seconds = round(max(total - step, 0) / steps_per_s)
        eta = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{done} {loss_text} {steps_per_s:.2f} it/s ETA {eta}"


class ProgressLog(Callback):
    """Logs a progress line every ``every_n_steps`` optimizer steps, or every ``every_seconds``
    seconds of training, whichever comes first, and at the last step::

        step 12/1600 (1%) loss 0.2134 2.41 it/s ETA 0:10:59

    with the latest ``train/loss`` and the optimizer steps per second since the previous line,
    validation excluded; the ETA assumes that rate for the remaining steps. It also logs
    ``validating at step 800`` and ``validated at step 800 in 12.3 s: val/loss 0.0431`` (sample
    videos included; every ``val/`` metric). Lines go through the ``vdm.training.progress``
    logger (INFO, rank zero only), which Hydra sends to stdout and to ``<run dir>/train.log``.

    On a terminal the progress bar shows all this, so the callback stays silent there unless
    ``on_terminal`` is set; it speaks when stdout is a file or a pipe (``slurm-<id>.out``,
    ``nohup``, CI).

    Example:
        >>> trainer = Trainer(callbacks=[ProgressLog(every_n_steps=50, every_seconds=60)])

    Args:
        every_n_steps: log at every multiple of this many optimizer steps; raise it for long
            runs with fast steps.
        every_seconds: also log when this many seconds of training (validation excluded)
            passed since the last line; lower it to see a slow run move sooner.
        on_terminal: log even when stdout is a terminal (beside the progress bar).
        clock: the time source, in seconds; tests pass a fake one.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        every_seconds: float = 60.0,
        on_terminal: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_n_steps < 1:
            raise UserError(f"callbacks.progress_log.every_n_steps={every_n_steps}: must be >= 1.")
        if every_seconds <= 0:
            raise UserError(f"callbacks.progress_log.every_seconds={every_seconds}: must be > 0.")
        self.every_n_steps, self.every_seconds = every_n_steps, every_seconds
        self.on_terminal, self.clock = on_terminal, clock
        self.active = False
        self.last_step = 0  # the step and time of the last line
        self.last_time = 0.0
        self.seen_step = 0  # the step of the last batch (accumulated batches share one)
        self.paused = 0.0  # seconds outside training since the last line
        self.validation_start: float | None = None  # until the next training batch starts

    def stdout_is_terminal(self) -> bool:
        """Whether stdout is a terminal (where the progress bar already shows progress)."""
        return sys.stdout.isatty()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.active = trainer.is_global_zero and (self.on_terminal or not self.stdout_is_terminal())
        self.last_step, self.last_time = trainer.global_step, self.clock()
        self.seen_step = trainer.global_step
        self.paused, self.validation_start = 0.0, None

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        if self.validation_start is not None:  # back from validation, samples and checkpoint
            self.paused += self.clock() - self.validation_start
            self.validation_start = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.active or step == self.seen_step:  # accumulating: not an optimizer step
            return
        self.seen_step = step
        now = self.clock()
        # Seconds of training since the last line: validation has lines of its own.
        seconds = now - self.last_time - self.paused
        last = 0 < trainer.max_steps <= step
        if step % self.every_n_steps and seconds < self.every_seconds and not last:
            return
        rate = (step - self.last_step) / seconds if seconds > 0 else None
        log.info(progress_line(step, self.total_steps(trainer), self.loss(trainer), rate))
        self.last_step, self.last_time, self.paused = step, now, 0.0

    def total_steps(self, trainer: Trainer) -> int | None:
        """Optimizer steps of the whole run: ``max_steps``, else Lightning's estimate."""
        if trainer.max_steps > 0:
            return trainer.max_steps
        estimate = trainer.estimated_stepping_batches
        return int(estimate) if math.isfinite(estimate) else None

    def loss(self, trainer: Trainer) -> float | None:
        """The latest training loss, or None before any was logged."""
        value = trainer.callback_metrics.get("train/loss")
        return None if value is None else float(value)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active or trainer.sanity_checking:
            return
        self.validation_start = self.clock()
        log.info("validating at step %d", trainer.global_step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active or self.validation_start is None:
            return
        seconds = self.clock() - self.validation_start
        values = [
            f"{name} {float(value):.4g}"
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("val/")
        ]
        scores = f": {', '.join(values)}" if values else ""
        log.info("validated at step %d in %.1f s%s", trainer.global_step, seconds, scores)
