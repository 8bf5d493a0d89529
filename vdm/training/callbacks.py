"""Callbacks Lightning lacks: sample videos after validation, written to disk and to loggers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vdm.diffusion.context import task_mask
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.files.video import to_uint8, write_clips
from vdm.inference.generation import sample_videos, side_by_side
from vdm.inference.model import SamplingInterrupted

log = logging.getLogger(__name__)


def check_values(prefix: str, **values: tuple[float | None, float, str]) -> None:
    """Refuse a callback's value below its minimum in one line: ``{key: (value, minimum,
    what)}``; None values (off / default) pass."""
    for key, (value, minimum, what) in values.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and (not number or value < minimum):
            raise UserError(f"{prefix}.{key}={value}: must be >= {minimum:g} ({what}).")


def kept(value, count: int):
    """The first ``count`` items of a batch entry (a tensor, on the CPU, or a list)."""
    if isinstance(value, torch.Tensor):
        return value[:count].detach().cpu()
    return list(value[:count])


def joined(a, b):
    """Two batch entries of one kind, one after the other."""
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else [*a, *b]


class SampleVideos(Callback):
    """After each validation, sample clips with a fixed seed, save them and log them.

    Runs on rank zero with the weights validation used (the EMA weights when
    ``EMAWeightAveraging`` is on: ``vdm.train`` orders weight averaging after this callback).
    Writes ``<dirpath>/step_XXXXXX/sample_XXXX.mp4`` and ``grid.gif``, and logs the grid and the
    clips to every ``WandbLogger`` (as file paths, so moviepy is not needed). A class-conditional
    model gets one grid row per class. A text-conditional model draws one clip per prompt
    (``prompts``, or the captions of the first validation clips), named after it
    (``sample_XXXX_<prompt>.mp4``) and logged with it as the caption. A frame-conditioned model
    (``context=mixed``) also gets a prediction grid, ``<dirpath>/step_XXXXXX/predict/``: the
    first frames of fixed validation clips given (with their captions), each clip shown as
    given | generated | real.

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
        prediction_frames: frames given in the prediction grid; None = half the clip, 0 = no
            prediction grid (it is only made for frame-conditioned models).
        batch_size: clips per forward pass (guidance doubles it): a large grid of a large
            model is sampled in chunks instead of all at once. Clip ``i`` starts from noise
            seeded by ``(seed, i)``, so a deterministic sampler (DDIM, DPM-Solver++) gives the
            same clips for any ``batch_size``.
        prompts: the prompts of a text-conditional model's samples, one clip each; None = the
            captions of the first ``num_samples`` validation clips.
    """

    def __init__(
        self,
        sampler: SamplingLoop,
        dirpath: str | Path,
        num_samples: int = 4,
        guidance_scale: float = 1.0,
        num_frames: int | None = None,
        fps: float = 8.0,
        upscale: int = 4,
        seed: int = 0,
        prediction_frames: int | None = None,
        batch_size: int = 8,
        prompts: list[str] | None = None,
    ) -> None:
        check_values(
            "callbacks.sample_videos",
            num_samples=(num_samples, 1, "clips per validation"),
            batch_size=(batch_size, 1, "clips per forward pass"),
            upscale=(upscale, 1, "nearest-neighbour factor"),
            guidance_scale=(guidance_scale, 0, "0 = unconditional, 1 = conditional, > 1 guided"),
            num_frames=(num_frames, 1, "frames per sampled clip; null = the clips' length"),
            prediction_frames=(prediction_frames, 0, "frames given; 0 = no prediction grid"),
        )
        if not isinstance(fps, int | float) or fps <= 0:
            raise UserError(f"callbacks.sample_videos.fps={fps}: must be > 0 (frames per second).")
        self.sampler, self.dirpath = sampler, Path(dirpath)
        self.num_samples, self.guidance_scale = num_samples, guidance_scale
        self.num_frames, self.fps, self.upscale, self.seed = num_frames, fps, upscale, seed
        self.prediction_frames, self.batch_size = prediction_frames, batch_size
        self.prompts = None if prompts is None else [str(p) for p in prompts]
        if self.prompts is not None and not self.prompts:
            raise UserError("callbacks.sample_videos.prompts=[]: give prompts, or null.")
        self._clip_shape: tuple[int, ...] | None = None
        self._real: dict | None = None  # fixed validation clips for the prediction grid
        self._real_complete = False
        self._interrupt = None  # asked before each model call: a signal stops the sampling

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
        if not self._real_complete:  # the first validation's clips, kept: the order is fixed
            wanted = self.num_samples * max(1, getattr(pl_module, "num_classes", 0))
            have = 0 if self._real is None else len(self._real["video"])
            part = {k: kept(v, wanted - have) for k, v in batch.items()}
            if self._real is None:
                self._real = part
            else:
                self._real = {k: joined(self._real[k], part[k]) for k in self._real}
            self._real_complete = len(self._real["video"]) >= wanted

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._clip_shape is None or not trainer.is_global_zero:
            return
        self._real_complete = True  # later validations predict the same clips
        self._interrupt = lambda: trainer.received_sigterm  # set by vdm's signal handler too
        try:
            self.write(trainer, pl_module)
        except SamplingInterrupted:
            # Stop within one sampler step, as Lightning stops within one batch: the run ends
            # through its usual path (CheckpointOnSignal saves the step, the exit status).
            raise SIGTERMException from None

    def write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Sample, write and log the clips (and the prediction grid) of this validation."""
        step = trainer.global_step
        videos, labels, prompts = self.sample(pl_module)
        out_dir = self.dirpath / f"step_{step:06d}"
        rows = (pl_module.num_classes if labels is not None else 0) or 1  # a row per class
        paths = write_clips(
            out_dir, videos, self.fps, self.upscale, nrow=len(videos) // rows, names=prompts
        )
        log.info("Wrote %d sample videos to %s", len(videos), out_dir)
        captions = prompts or ([f"class {int(c)}" for c in labels] if labels is not None else None)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("samples/grid", [str(out_dir / "grid.gif")], step=step)
                extra = {"caption": captions} if captions else {}
                logger.log_video("samples/clips", [str(p) for p in paths], step=step, **extra)
        predictions = self.predict(pl_module)
        if predictions is not None:
            write_clips(out_dir / "predict", predictions, self.fps, self.upscale)
            log.info("Wrote %d prediction videos to %s", len(predictions), out_dir / "predict")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    grid = str(out_dir / "predict" / "grid.gif")
                    logger.log_video("samples/predict", [grid], step=step)

    def sample_prompts(self, pl_module: LightningModule) -> list[str] | None:
        """The prompts of a text-conditional model's samples (None for a model without text)."""
        if not getattr(pl_module, "takes_text", False):
            return None
        if self.prompts is not None:
            return self.prompts
        captions = (self._real or {}).get("caption")
        if not captions:
            raise UserError(
                "callbacks.sample_videos: the validation clips carry no captions to sample a "
                "text-conditional model with: set callbacks.sample_videos.prompts=[...]."
            )
        return list(captions[: self.num_samples])

    @torch.no_grad()
    def sample(
        self, pl_module: LightningModule
    ) -> tuple[np.ndarray, torch.Tensor | None, list[str] | None]:
        """uint8 ``(N, T, H, W, 3)`` samples, their labels (None if unconditional or prompted)
        and their prompts (None without text)."""
        c, t, h, w = self._clip_shape
        labels = None
        n = self.num_samples
        prompts = self.sample_prompts(pl_module)
        if prompts is not None:  # one clip per prompt; labels (if any) at the null label
            n = len(prompts)
        elif pl_module.num_classes:
            labels = torch.arange(pl_module.num_classes).repeat_interleave(self.num_samples)
            n = len(labels)
        # Guidance needs labels or text: unconditional models (a flat folder) sample without it.
        scale = self.guidance_scale if labels is not None or prompts is not None else 1.0
        videos = sample_videos(
            pl_module, self.sampler, (c, self.num_frames or t, h, w),
            None if labels is None else labels.tolist(), n, self.batch_size,
            guidance_scale=scale, seed=self.seed, interrupt=self._interrupt, prompts=prompts,
        )  # fmt: skip
        return to_uint8(videos), labels, prompts

    @torch.no_grad()
    def predict(self, pl_module: LightningModule) -> np.ndarray | None:
        """uint8 given | generated | real clips ``(N, T, H, 3·W + 2, 3)`` continuing the first
        frames of fixed validation clips; None when the model takes no given frames."""
        if not getattr(pl_module, "frame_conditioning", False) or self._real is None:
            return None
        if self.prediction_frames == 0:
            return None
        real = self._real["video"].to(pl_module.device)
        frames = real.shape[2]
        mask = task_mask("predict", frames, self.prediction_frames or max(1, frames // 2))
        mask = mask.to(pl_module.device).expand(len(real), -1)
        given = real * mask[:, None, :, None, None]
        labels = None
        if pl_module.num_classes and "label" in self._real:
            labels = self._real["label"].to(pl_module.device)
        prompts = list(self._real["caption"]) if getattr(pl_module, "takes_text", False) else None
        guided = labels is not None or prompts is not None
        scale = self.guidance_scale if guided else 1.0
        videos = sample_videos(
            pl_module, self.sampler, tuple(real.shape[1:]),
            None if labels is None else labels.tolist(), len(real), self.batch_size,
            guidance_scale=scale, seed=self.seed, context=(given, mask), interrupt=self._interrupt,
            prompts=prompts,
        )  # fmt: skip
        return side_by_side(*(to_uint8(v) for v in (given, videos, real)))


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
