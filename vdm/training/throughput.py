"""Training throughput in the logs: clips per second and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from vdm.errors import UserError
from vdm.training.flops import compute_dtype, peak_flops, training_flops_per_clip

log = logging.getLogger(__name__)


def denoiser_input_shape(pl_module: LightningModule, batch: dict) -> tuple[int, ...]:
    """``(C, T, H, W)`` of what the denoiser sees per clip: the video, or its latents (cached,
    or the autoencoder's latent shape of the video)."""
    if "latents_mean" in batch:
        return tuple(batch["latents_mean"].shape[1:])
    clip = tuple(batch["video"].shape[1:])
    autoencoder = getattr(pl_module, "autoencoder", None)
    return autoencoder.latent_shape(clip) if autoencoder is not None else clip


class Mark(NamedTuple):
    """The state of the run at the end of an optimizer step."""

    step: int  # trainer.global_step
    time: float  # the clock, after the device finished the step's work
    clips: int  # clips this rank has trained on so far
    paused: float  # seconds spent outside training (validation, samples) so far


def rates(
    start: Mark, end: Mark, world_size: int, flops_per_clip: float | None, peak: float | None
) -> dict[str, float]:
    """``train/samples_per_s`` and (when FLOPs and peak are known) ``train/mfu`` between two
    marks, the paused time excluded. Every rank is taken to train on as many clips as this one
    (vdm's data module gives each rank the same batch size).

    Args:
        start: the mark that opens the window.
        end: the mark that closes it.
        world_size: the number of devices (ranks) training together.
        flops_per_clip: model FLOPs of one clip's forward + backward; None = unknown.
        peak: peak FLOP/s of one device; None = unknown.
    """
    seconds = (end.time - start.time) - (end.paused - start.paused)
    clips = end.clips - start.clips
    if seconds <= 0:
        return {}
    metrics = {"train/samples_per_s": clips * world_size / seconds}
    if flops_per_clip and peak:
        metrics["train/mfu"] = flops_per_clip * clips / seconds / peak
    return metrics


class ThroughputLog(Callback):
    """Logs how fast training runs: ``train/samples_per_s`` (clips per second, all devices
    together) and ``train/mfu`` (model FLOPs per second of one device over its peak), as
    Lightning's ``ThroughputMonitor`` does, through ``pl_module.log`` so every logger gets them.

    Model FLOPs per clip are counted once, on the first training batch, by running the denoiser
    on one clip of the batch's shape under ``torch.utils.flop_counter``
    (:func:`~vdm.training.flops.training_flops_per_clip`, which leaves RNG streams and
    gradients as they were, so a resumed run stays exact). The peak is the datasheet figure of
    the GPU for the trainer's precision, or the measured matmul peak of a CPU
    (:func:`~vdm.training.flops.peak_flops`). The figures average over at least ``window``
    optimizer steps (the first step, with its warm-up, is left out) and are logged at the
    trainer's ``log_every_n_steps``. The clock stops from the start of a validation until the
    next training batch, so validation, sample videos and checkpoints do not count; on a GPU it
    is read after ``torch.cuda.synchronize``, once per logged value.

    Example:
        >>> trainer = Trainer(callbacks=[ThroughputLog(window=20)], log_every_n_steps=10)

    Args:
        window: optimizer steps a figure averages over, at least (rounded up to a multiple of
            ``log_every_n_steps``); raise it for steadier figures, lower it for short runs.
        peak_flops: peak FLOP/s of one device; None = the GPU's datasheet figure or the CPU's
            measured matmul peak. Set it for a GPU vdm does not know (MFU is not logged then).
        clock: the time source, in seconds; tests pass a fake one.
    """

    def __init__(
        self,
        window: int = 20,
        peak_flops: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if window < 1:
            raise UserError(f"callbacks.throughput.window={window}: must be >= 1.")
        self.window, self.peak_flops, self.clock = window, peak_flops, clock
        self.flops_per_clip: int | None = None  # counted on the first training batch
        self.peak: float | None = None
        self.marks: deque[Mark] = deque()
        self.clips = 0
        self.paused = 0.0
        self.paused_since: float | None = None  # when validation started
        self.last_step = -1
        self.counted = False

    def now(self, pl_module: LightningModule) -> float:
        """The clock, once the device has finished the work queued so far."""
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return self.clock()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.marks.clear()
        self.clips, self.paused, self.paused_since = 0, 0.0, None
        self.last_step = trainer.global_step
        self.peak = self.peak_flops or peak_flops(
            pl_module.device, compute_dtype(trainer.precision)
        )
        if self.peak is None:
            rank_zero_warn(
                f"No peak FLOP/s known for {pl_module.device}: train/mfu is not logged; give "
                "it with callbacks.throughput.peak_flops=<FLOP/s of one device>."
            )
        elif pl_module.device.type == "cpu" and not self.peak_flops:
            rank_zero_only(log.info)(
                "Peak for train/mfu: %.0f GFLOP/s (%s matmul measured on %d threads)",
                self.peak / 1e9, compute_dtype(trainer.precision), torch.get_num_threads(),
            )  # fmt: skip

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int
    ) -> None:
        if self.paused_since is not None:  # back from validation
            self.paused += self.now(pl_module) - self.paused_since
            self.paused_since = None
        if not self.counted:
            self.counted = True
            self.flops_per_clip = self.count(pl_module, denoiser_input_shape(pl_module, batch))

    def count(self, pl_module: LightningModule, clip_shape: tuple[int, ...]) -> int | None:
        """Model FLOPs of one clip's training step, or None (with a warning) if they cannot be
        counted: MFU is then left out rather than the run stopped."""
        denoiser = getattr(pl_module, "denoiser", None)
        if denoiser is None:
            return None
        try:
            text = None
            if getattr(pl_module, "takes_text", False):  # the denoiser's FLOPs on the null prompt
                with torch.no_grad():
                    text = pl_module.encode_text([""])
            flops = training_flops_per_clip(denoiser, clip_shape, text)
        except Exception as error:  # a metric must not end a run
            rank_zero_warn(
                f"Counting the denoiser's FLOPs failed ({error!r}): train/mfu is not logged. "
                "callbacks.throughput=null turns this callback off."
            )
            return None
        rank_zero_only(log.info)(
            "Model FLOPs per clip %s (forward + backward): %.3g GFLOP", clip_shape, flops / 1e9
        )
        return flops

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch: dict, batch_idx: int
    ) -> None:
        self.clips += len(next(iter(batch.values())))
        step = trainer.global_step
        if step == self.last_step:  # accumulating gradients: not an optimizer step yet
            return
        self.last_step = step
        every = trainer.log_every_n_steps
        # The first step (warm-up, compilation) opens the first window; later marks are taken
        # only where Lightning writes logs, so the device is synchronised only there.
        if self.marks and (every <= 0 or step % every):
            return
        mark = Mark(step, self.now(pl_module), self.clips, self.paused)
        self.marks.append(mark)
        while len(self.marks) > 1 and self.marks[1].step <= step - self.window:
            self.marks.popleft()  # keep the newest mark at least a window back
        start = self.marks[0]
        if start.step > step - self.window:
            return
        metrics = rates(start, mark, trainer.world_size, self.flops_per_clip, self.peak)
        for name, value in metrics.items():
            if math.isfinite(value):
                pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.paused_since is None:
            self.paused_since = self.now(pl_module)
