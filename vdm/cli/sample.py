"""`python -m vdm.sample ckpt_path=PATH`: sample clips from a checkpoint to mp4, gif and npz.

The checkpoint stores the resolved training config, so the denoiser, the diffusion process and
the clip size are rebuilt from it: no model flags to repeat. Checkpoints of runs with
``EMAWeightAveraging`` hold the EMA weights in ``state_dict``; those are the ones sampled.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vdm.checkpoint import load_checkpoint
from vdm.config_check import check_sample_config, check_sampler_fits
from vdm.data.dataset import read_video_start
from vdm.diffusion.context import TASKS
from vdm.diffusion.samplers import Sampler
from vdm.generation import sample_long_videos, sample_videos, side_by_side, window_context
from vdm.module import VideoDiffusionModule
from vdm.train import build_diffusion, build_model, compile_denoiser, user_errors_in_one_line
from vdm.video_io import to_uint8, write_clips, write_npz

log = logging.getLogger(__name__)

# Written clips are upscaled (nearest neighbour) to at least this many pixels: 32-px clips are
# too small to watch. The npz keeps the model's resolution.
MIN_VIEW_SIZE = 128


@dataclass
class LoadedRun:
    """A trained model rebuilt from its checkpoint."""

    module: VideoDiffusionModule  # denoiser + diffusion, in eval mode
    config: DictConfig  # the training run's resolved config
    weights: str  # "EMA" or "training" (a run without EMAWeightAveraging)
    global_step: int  # optimizer steps the weights were trained for


def load_run(ckpt_path: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild the denoiser and the diffusion of a training run and load its weights."""
    checkpoint = load_checkpoint(ckpt_path)
    config = OmegaConf.create(checkpoint["hyper_parameters"])
    prefix = "denoiser."
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    denoiser = build_model(config)
    try:
        denoiser.load_state_dict(state)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"ckpt_path={ckpt_path}: its weights do not fit its own model config ({reason}); "
            "was it written by another version of vdm?"
        ) from None
    module = VideoDiffusionModule(denoiser, build_diffusion(config), optimizer=None)
    module.to(device).eval()
    weights = "EMA" if "current_model_state" in checkpoint else "training"
    return LoadedRun(module, config, weights, int(checkpoint.get("global_step", 0)))


def class_labels(labels: list[int] | None, num_samples: int, num_classes: int) -> list[int] | None:
    """The label of each clip: ``labels`` cycled, or the classes in equal blocks (None for an
    unconditional model)."""
    if num_classes == 0:
        if labels:
            raise ValueError(
                f"labels={list(labels)} needs a class-conditional model; this one is "
                "unconditional (num_classes=0): leave labels=null."
            )
        return None
    if not labels:
        return [i * num_classes // num_samples for i in range(num_samples)]
    labels = [int(c) for c in labels]
    if any(not 0 <= c < num_classes for c in labels):
        raise ValueError(f"labels={labels}: this model knows classes 0..{num_classes - 1}.")
    return [labels[i % len(labels)] for i in range(num_samples)]


def sample_clips(
    module: VideoDiffusionModule,
    sampler: Sampler,
    clip_shape: tuple[int, int, int, int],
    labels: list[int] | None,
    num_samples: int,
    batch_size: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
    precision: str = "32-true",
    progress: bool = False,
) -> np.ndarray:
    """``num_samples`` generated clips as uint8 ``(N, T, H, W, C)``
    (:func:`vdm.generation.sample_videos`)."""
    videos = sample_videos(
        module, sampler, clip_shape, labels, num_samples, batch_size, guidance_scale, seed,
        precision, progress,
    )  # fmt: skip
    return to_uint8(videos)


def sample_as_configured(
    cfg: DictConfig,
    loaded: LoadedRun,
    sampler: Sampler,
    labels: list[int] | None,
    context: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_samples: int | None = None,
) -> tuple[np.ndarray, float]:
    """Sample with the keys that conf/sample.yaml and conf/evaluate.yaml share (num_samples,
    batch_size, guidance_scale, seed, frames, precision); return the clips and the guidance.

    ``context = (video, mask)`` gives frames to every clip (``(N, C, T, H, W)``, ``(N, T)``)."""
    module, run_cfg = loaded.module, loaded.config
    guidance = guidance_for(cfg.guidance_scale, run_cfg, module.num_classes)
    size = run_cfg.data.size
    frames = context[1].shape[1] if context is not None else cfg.frames or run_cfg.data.clip_len
    clip_shape = (run_cfg.model.in_channels, frames, size, size)
    num_samples = num_samples or cfg.num_samples
    log.info(
        "Sampling %d clips of %s (C, T, H, W) with %s, guidance %g, %s weights",
        num_samples, clip_shape, sampler_name(sampler, module.diffusion.num_steps), guidance,
        loaded.weights,
    )  # fmt: skip
    videos = sample_videos(
        module,
        sampler,
        clip_shape,
        labels,
        num_samples,
        cfg.batch_size,
        guidance_scale=guidance,
        seed=cfg.seed,
        precision=cfg.precision,
        progress=True,
        context=context,
    )
    return to_uint8(videos), guidance


def guidance_for(scale: float | None, run_cfg: DictConfig, num_classes: int) -> float:
    """``scale``, or by default the run's sample-video guidance for conditional models and 1
    (none) for unconditional ones."""
    if scale is not None:
        return scale
    if num_classes == 0:
        return 1.0
    return OmegaConf.select(run_cfg, "callbacks.sample_videos.guidance_scale", default=1.0)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sampler_name(sampler: Sampler, num_steps: int) -> str:
    """``ddim50``, ``dpmsolver20``, ``ddpm1000``: names output folders."""
    kind = type(sampler).__name__.removesuffix("Sampler").lower()
    return f"{kind}{sampler.steps or num_steps}"


def run_dir_of(ckpt_path: Path) -> Path:
    """The training run folder of ``<run dir>/checkpoints/x.ckpt`` (else the file's folder)."""
    ckpt_path = Path(ckpt_path).expanduser().resolve()
    parent = ckpt_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def read_context_clip(path: str, run_cfg: DictConfig, max_frames: int) -> torch.Tensor:
    """The first ``max_frames`` frames of ``path`` as the model saw its data: float
    ``(C, T, H, W)`` in [-1, 1] at the run's size and frame stride."""
    frames = read_video_start(
        Path(path).expanduser(), run_cfg.data.size, run_cfg.data.get("frame_stride", 1), max_frames
    )
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def check_task(cfg: DictConfig, module: VideoDiffusionModule) -> str:
    """The task of ``cfg``, after the checks that need no sampling."""
    task = cfg.get("task") or "generate"
    if task not in TASKS:
        raise ValueError(f"Unknown task={task}: use one of {', '.join(TASKS)}.")
    if task != "generate" and not module.frame_conditioning:
        raise ValueError(
            f"task={task} needs a checkpoint trained with frame masks (python train.py "
            f"context=mixed); ckpt_path={cfg.ckpt_path} was trained with context=none."
        )
    if task in ("predict", "interpolate") and not cfg.context.video:
        raise ValueError(f"task={task} needs context.video=PATH, the video whose frames are given.")
    if task == "extend" and not cfg.frames:
        raise ValueError("task=extend needs frames=N, the length of the videos to sample.")
    return task


def sample_task(
    cfg: DictConfig, task: str, loaded: LoadedRun, sampler: Sampler, labels: list[int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``task`` (predict, interpolate or extend) as ``cfg`` says.

    Returns:
        ``(videos, shown, mask)``: the sampled clips uint8 ``(N, T, H, W, 3)``, what the mp4s
        show (given | generated | real side by side for predict and interpolate), and the
        context mask ``(T,)``.
    """
    run_cfg, given = loaded.config, cfg.context.frames
    if task == "extend":
        window = cfg.extend.window or run_cfg.data.clip_len
        clip = read_context_clip(cfg.context.video, run_cfg, given) if cfg.context.video else None
        if clip is not None and clip.shape[1] < given:
            raise ValueError(
                f"context.video={cfg.context.video} has {clip.shape[1]} frames at the model's "
                f"frame stride, fewer than context.frames={given}."
            )
        size = run_cfg.data.size
        videos = sample_long_videos(
            loaded.module, sampler, (run_cfg.model.in_channels, size, size), cfg.frames, window,
            cfg.extend.overlap or given, clip, labels, cfg.num_samples,
            batch_size=cfg.batch_size, seed=cfg.seed, precision=cfg.precision, progress=True,
            guidance_scale=guidance_for(cfg.guidance_scale, run_cfg, loaded.module.num_classes),
        )  # fmt: skip
        mask = np.arange(cfg.frames) < (given if clip is not None else 0)
        return to_uint8(videos), to_uint8(videos), mask
    window = cfg.frames or run_cfg.data.clip_len
    clip = read_context_clip(cfg.context.video, run_cfg, window)
    video, mask, truth = window_context(task, clip, window, given)
    n = cfg.num_samples
    context = (video[None].expand(n, *video.shape), mask[None].expand(n, window))
    videos, _ = sample_as_configured(cfg, loaded, sampler, labels, context=context)
    given_view = to_uint8(video[None]).repeat(n, axis=0)
    truth_view = None if truth is None else to_uint8(truth[None]).repeat(n, axis=0)
    return videos, side_by_side(given_view, videos, truth_view), mask.numpy()


def run(cfg: DictConfig) -> Path:
    """Sample as ``cfg`` (conf/sample.yaml) says; return the output folder."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ValueError(
            "ckpt_path is missing: python -m vdm.sample ckpt_path=<run dir>/checkpoints/last.ckpt"
        )
    check_sample_config(cfg)
    loaded = load_run(cfg.ckpt_path, resolve_device(cfg.device))
    module = loaded.module
    if cfg.get("compile"):
        compile_denoiser(module)
    task = check_task(cfg, module)
    check_sampler_fits(cfg.sampler, loaded.config.diffusion, f"ckpt_path={cfg.ckpt_path}")
    sampler: Sampler = instantiate(cfg.sampler)
    labels = class_labels(cfg.labels, cfg.num_samples, module.num_classes)
    name = sampler_name(sampler, module.diffusion.num_steps)
    folder = f"{Path(cfg.ckpt_path).stem}-{name}-seed{cfg.seed}"
    if task != "generate":
        folder += f"-{task}"
    out_dir = Path(cfg.out_dir or run_dir_of(cfg.ckpt_path) / "samples" / folder)
    start = time.perf_counter()
    if task == "generate":
        videos, _ = sample_as_configured(cfg, loaded, sampler, labels)
        shown, extra = videos, {}
    else:
        videos, shown, mask = sample_task(cfg, task, loaded, sampler, labels)
        extra = {"context_mask": mask}
    seconds = time.perf_counter() - start
    upscale = cfg.upscale or max(1, math.ceil(MIN_VIEW_SIZE / max(videos.shape[2:4])))
    # A row per class when the classes come in equal blocks; else a near-square grid.
    blocks = labels is not None and not cfg.labels and cfg.num_samples % module.num_classes == 0
    nrow = cfg.num_samples // module.num_classes if blocks else math.ceil(math.sqrt(len(videos)))
    write_npz(out_dir / "samples.npz", videos, **extra)
    write_clips(out_dir, shown, cfg.fps, upscale, nrow)
    print(
        f"Sampled {len(videos)} clips in {seconds:.1f} s ({seconds / len(videos):.2f} s/clip). "
        f"Wrote sample_0000.mp4 .. sample_{len(videos) - 1:04d}.mp4, grid.gif and samples.npz "
        f"to {out_dir}"
    )
    return out_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


if __name__ == "__main__":
    main()
