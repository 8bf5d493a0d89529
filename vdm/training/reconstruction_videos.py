"""Reconstruction videos of an autoencoder run: input | reconstruction after each validation."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from vdm.errors import UserError
from vdm.files.video import to_uint8, write_clips
from vdm.inference.generation import side_by_side
from vdm.training.callbacks import check_values

log = logging.getLogger(__name__)


class ReconstructionVideos(Callback):
    """After each validation, reconstruct the first ``num_samples`` validation clips (the same
    clips every time) with the module's ``reconstruct``, write them as input | reconstruction to
    ``<dirpath>/step_XXXXXX/`` (``sample_XXXX.mp4``, ``grid.gif``) and log the grid to every
    ``WandbLogger`` as ``samples/reconstruction``. Rank zero only.

    Args:
        dirpath: folder for the videos (``<run dir>/samples``).
        num_samples: clips per validation.
        fps: frame rate of the written files.
        upscale: nearest-neighbour upscaling of the written frames.
    """

    def __init__(
        self, dirpath: str | Path, num_samples: int = 4, fps: float = 8.0, upscale: int = 4
    ):
        check_values(
            "callbacks.reconstruction_videos",
            num_samples=(num_samples, 1, "clips per validation"),
            upscale=(upscale, 1, "nearest-neighbour factor"),
        )
        if not isinstance(fps, int | float) or fps <= 0:
            raise UserError(f"callbacks.reconstruction_videos.fps={fps}: must be > 0.")
        self.dirpath, self.num_samples, self.fps, self.upscale = (
            Path(dirpath),
            num_samples,
            fps,
            upscale,
        )
        self._real: torch.Tensor | None = None  # the first validation's clips, kept
        self._complete = False

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        have = 0 if self._real is None else len(self._real)
        if have < self.num_samples and not self._complete:
            part = batch["video"][: self.num_samples - have].detach().cpu()
            self._real = part if self._real is None else torch.cat([self._real, part])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._real is None or not trainer.is_global_zero:
            return
        self._complete = True  # later validations reconstruct the same clips
        real = self._real.to(pl_module.device)
        reconstruction = pl_module.reconstruct(real)
        panels = side_by_side(to_uint8(real), to_uint8(reconstruction))
        out_dir = self.dirpath / f"step_{trainer.global_step:06d}"
        write_clips(out_dir, panels, self.fps, self.upscale)
        log.info(
            "Wrote %d reconstruction videos (input | reconstruction) to %s", len(panels), out_dir
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("samples/reconstruction", [str(out_dir / "grid.gif")],
                                 step=trainer.global_step)  # fmt: skip
