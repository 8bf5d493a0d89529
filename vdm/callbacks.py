"""Callbacks Lightning lacks: sample videos after validation, written to disk and to loggers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from vdm.diffusion.samplers import Sampler
from vdm.video_io import to_uint8, write_clips

log = logging.getLogger(__name__)


class SampleVideos(Callback):
    """After each validation, sample clips with a fixed seed, save them and log them.

    Runs on rank zero with the weights validation used (the EMA weights when
    ``EMAWeightAveraging`` is on: ``vdm.train`` orders weight averaging after this callback).
    Writes ``<dirpath>/step_XXXXXX/sample_XXXX.mp4`` and ``grid.gif``, and logs the grid and the
    clips to every ``WandbLogger`` (as file paths, so moviepy is not needed). A class-conditional
    model gets one grid row per class.

    Args:
        sampler: the sampler to use (a DDIM-50 or DPM-Solver++-20 keeps this fast).
        dirpath: folder for the samples (``<run dir>/samples``).
        num_samples: clips per validation; for a conditional model, per class.
        guidance_scale: classifier-free guidance for conditional models (unconditional ones
            ignore it); 1 = none.
        num_frames: frames per sampled clip; None = the validation clips' length.
        fps: frame rate of the written files.
        upscale: nearest-neighbour upscaling of the written frames (32-px clips are tiny).
        seed: seed of the initial noise: the same noise at every validation, so the grids
            show the model improving rather than new noise.
    """

    def __init__(
        self,
        sampler: Sampler,
        dirpath: str | Path,
        num_samples: int = 4,
        guidance_scale: float = 1.0,
        num_frames: int | None = None,
        fps: float = 8.0,
        upscale: int = 4,
        seed: int = 0,
    ) -> None:
        self.sampler, self.dirpath = sampler, Path(dirpath)
        self.num_samples, self.guidance_scale = num_samples, guidance_scale
        self.num_frames, self.fps, self.upscale, self.seed = num_frames, fps, upscale, seed
        self._clip_shape: tuple[int, ...] | None = None

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._clip_shape is None:
            self._clip_shape = tuple(batch["video"].shape[1:])  # (C, T, H, W)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._clip_shape is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        videos, labels = self.sample(pl_module)
        out_dir = self.dirpath / f"step_{step:06d}"
        rows = pl_module.num_classes or 1  # a row per class
        paths = write_clips(out_dir, videos, self.fps, self.upscale, nrow=len(videos) // rows)
        log.info("Wrote %d sample videos to %s", len(videos), out_dir)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("samples/grid", [str(out_dir / "grid.gif")], step=step)
                extra = (
                    {"caption": [f"class {int(c)}" for c in labels]} if labels is not None else {}
                )
                logger.log_video("samples/clips", [str(p) for p in paths], step=step, **extra)

    @torch.no_grad()
    def sample(self, pl_module: LightningModule) -> tuple[np.ndarray, torch.Tensor | None]:
        """uint8 ``(N, T, H, W, 3)`` samples, and their labels (None if unconditional)."""
        c, t, h, w = self._clip_shape
        t = self.num_frames or t
        labels = None
        n = self.num_samples
        if pl_module.num_classes:
            labels = torch.arange(pl_module.num_classes, device=pl_module.device)
            labels = labels.repeat_interleave(self.num_samples)
            n = len(labels)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        # Guidance needs labels: unconditional models (e.g. a flat folder) sample without it.
        scale = self.guidance_scale if labels is not None else 1.0
        videos = pl_module.generate(
            self.sampler, (n, c, t, h, w), labels=labels, guidance_scale=scale, generator=generator
        )
        return to_uint8(videos), labels


class ValidateAtEnd(Callback):
    """End every run with a validation pass (and so samples and a checkpoint).

    Lightning validates every ``val_check_interval`` steps; when ``trainer.max_steps`` falls
    between two of those, the run would end without one. Asking the trainer to stop at the last
    step makes Lightning validate right there, which also triggers ``ModelCheckpoint`` and
    :class:`SampleVideos`.
    """

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
