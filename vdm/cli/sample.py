"""``vdm-sample ckpt_path=PATH`` (``python -m vdm.sample``): sample clips from a checkpoint to
mp4, gif and npz.

The checkpoint stores the resolved training config, so the denoiser, the diffusion process, the
clip size and the default sampler are rebuilt from it: no model flags to repeat. Checkpoints of
runs with ``EMAWeightAveraging`` hold the EMA weights in ``state_dict``; those are sampled.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from vdm.cli.checks import check_sample_config
from vdm.cli.common import load_configured_run, sampler_for
from vdm.cli.errors import user_errors_in_one_line
from vdm.cli.overrides import check_overrides
from vdm.diffusion.context import TASKS
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.files.video import slug, to_uint8, write_clips, write_npz
from vdm.inference.generation import (
    class_labels,
    clip_prompts,
    sample_long_videos,
    sampler_name,
    side_by_side,
    window_context,
)
from vdm.inference.run import LoadedRun, run_dir_of

log = logging.getLogger(__name__)

# Written clips are upscaled (nearest neighbour) to at least this many pixels: 32-px clips are
# too small to watch. The npz keeps the model's resolution.
MIN_VIEW_SIZE = 128


def check_task(cfg: DictConfig, loaded: LoadedRun) -> str:
    """The task of ``cfg``, after the checks that need no sampling."""
    task = cfg.get("task") or "generate"
    if task not in TASKS:
        raise UserError(f"Unknown task={task}: use one of {', '.join(TASKS)}.")
    if task != "generate" and not loaded.model.frame_conditioning:
        raise UserError(
            f"task={task} needs a checkpoint trained with frame masks (python train.py "
            f"context=mixed); ckpt_path={cfg.ckpt_path} was trained with context=none."
        )
    if task in ("predict", "interpolate") and not cfg.context.video:
        raise UserError(f"task={task} needs context.video=PATH, the video whose frames are given.")
    if task == "extend" and not cfg.frames:
        raise UserError("task=extend needs frames=N, the length of the videos to sample.")
    return task


def read_prompts(cfg: DictConfig) -> list[str] | None:
    """The prompts of ``prompt=TEXT`` or ``prompts=FILE`` (one per line, blank lines skipped);
    None when neither is set."""
    prompt, path = cfg.get("prompt"), cfg.get("prompts")
    if prompt is not None and path:
        raise UserError("prompt= and prompts= are both set: give one prompt, or a file of them.")
    if prompt is not None:
        return [str(prompt)]
    if not path:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"prompts={path} is not a file: give a text file with one prompt a line.")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise UserError(f"prompts={path} holds no prompt: write one prompt a line.")
    return prompts


def prompt_blocks(prompts: list[str] | None, num_samples: int) -> list[str] | None:
    """Each prompt ``num_samples`` times, in blocks: the prompt of every clip."""
    return None if prompts is None else [p for p in prompts for _ in range(num_samples)]


def sample_task(
    cfg: DictConfig,
    task: str,
    loaded: LoadedRun,
    sampler: SamplingLoop,
    labels: list[int] | None,
    prompts: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample ``task`` as ``cfg`` says, ``prompts`` being the prompt of each clip (or None).

    Returns:
        ``(videos, shown, extra)``: the sampled clips uint8 ``(N, T, H, W, 3)``, what the mp4s
        show (given | generated | real side by side for predict and interpolate), and the
        npz's extra arrays (``context_mask (T,)`` when frames are given).
    """
    run_cfg, given = loaded.config, cfg.context.frames
    n = len(prompts) if prompts else cfg.num_samples
    options = dict(
        batch_size=cfg.batch_size, seed=cfg.seed, precision=cfg.precision, prompts=prompts,
        negative_prompt=cfg.get("negative_prompt") or "",
    )  # fmt: skip
    if task == "generate":
        videos = loaded.sample(sampler, n, frames=cfg.frames, labels=labels,
                               guidance_scale=cfg.guidance_scale, **options)  # fmt: skip
        return to_uint8(videos), to_uint8(videos), {}
    if task == "extend":
        window = cfg.extend.window or run_cfg.data.clip_len
        clip = loaded.read_clip(cfg.context.video, given) if cfg.context.video else None
        if clip is not None and clip.shape[1] < given:
            raise UserError(
                f"context.video={cfg.context.video} has {clip.shape[1]} frames at the model's "
                f"frame stride, fewer than context.frames={given}."
            )
        c, _, h, w = loaded.clip_shape()
        videos = sample_long_videos(
            loaded.model, sampler, (c, h, w), cfg.frames, window, cfg.extend.overlap or given,
            clip, labels, n, progress=True, guidance_scale=loaded.guidance(cfg.guidance_scale),
            **options,
        )  # fmt: skip
        mask = np.arange(cfg.frames) < (given if clip is not None else 0)
        return to_uint8(videos), to_uint8(videos), {"context_mask": mask}
    window = cfg.frames or run_cfg.data.clip_len
    video, mask, truth = window_context(task, loaded.read_clip(cfg.context.video, window), window,
                                        given)  # fmt: skip
    context = (video[None].expand(n, *video.shape), mask[None].expand(n, window))
    videos = to_uint8(loaded.sample(sampler, n, labels=labels, guidance_scale=cfg.guidance_scale,
                                    context=context, **options))  # fmt: skip
    given_view = to_uint8(video[None]).repeat(n, axis=0)
    truth_view = None if truth is None else to_uint8(truth[None]).repeat(n, axis=0)
    return videos, side_by_side(given_view, videos, truth_view), {"context_mask": mask.numpy()}


def run(cfg: DictConfig) -> Path:
    """Sample as ``cfg`` (conf/sample.yaml) says; return the output folder."""
    check_sample_config(cfg)
    loaded = load_configured_run(cfg, "vdm.sample")
    model = loaded.model
    task = check_task(cfg, loaded)
    sampler = sampler_for(cfg, loaded)
    given_prompts = read_prompts(cfg)
    prompts = prompt_blocks(given_prompts, cfg.num_samples)
    total = len(prompts) if prompts else cfg.num_samples
    clip_prompts(model, prompts, total)  # a prompt for a model without text: one line, now
    labels = class_labels(cfg.labels, total, model.num_classes)
    folder = f"{Path(cfg.ckpt_path).stem}-{sampler_name(sampler, model.diffusion.num_steps)}"
    folder += f"-seed{cfg.seed}" + ("" if task == "generate" else f"-{task}")
    if given_prompts is not None and len(given_prompts) == 1:
        folder += f"-{slug(given_prompts[0])}"
    out_dir = Path(cfg.out_dir or run_dir_of(cfg.ckpt_path) / "samples" / folder)
    start = time.perf_counter()
    videos, shown, extra = sample_task(cfg, task, loaded, sampler, labels, prompts)
    if prompts is not None:
        extra["prompts"] = np.array(prompts)
    seconds = time.perf_counter() - start
    upscale = cfg.upscale or max(1, math.ceil(MIN_VIEW_SIZE / max(videos.shape[2:4])))
    # A row per class when the classes come in equal blocks; else a near-square grid.
    blocks = labels is not None and not cfg.labels and cfg.num_samples % model.num_classes == 0
    nrow = cfg.num_samples // model.num_classes if blocks else math.ceil(math.sqrt(len(videos)))
    if prompts is not None:
        nrow = cfg.num_samples  # a row per prompt
    write_npz(out_dir / "samples.npz", videos, **extra)
    write_clips(out_dir, shown, cfg.fps, upscale, nrow, names=prompts)
    print(
        f"Sampled {len(videos)} clips in {seconds:.1f} s ({seconds / len(videos):.2f} s/clip). "
        f"Wrote {len(videos)} sample_XXXX*.mp4, grid.gif and samples.npz "
        f"to {out_dir}"
    )
    return out_dir


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


def main() -> None:
    """``vdm-sample [overrides]``, as conf/sample.yaml and the overrides say."""
    check_overrides("sample", sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
