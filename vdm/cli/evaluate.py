"""``vdm-evaluate ckpt_path=PATH fvd.extractor=PATH`` (``python -m vdm.evaluate``): FVD of a
checkpoint's samples against real clips (and CLIP-score against their prompts, ``clip.path=``),
or PSNR / SSIM of its predictions and interpolations, printed and written as JSON together with
the protocol that produced them."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vdm.cli.checks import check_sample_config
from vdm.cli.common import load_configured_run, sampler_config, sampler_for
from vdm.cli.errors import user_errors_in_one_line
from vdm.cli.overrides import check_overrides
from vdm.errors import UserError
from vdm.evaluation.clip_score import ClipScore
from vdm.evaluation.fvd import fvd_of_samples
from vdm.evaluation.metrics import FrechetVideoDistance
from vdm.evaluation.prompt_adherence import adherence_of_samples
from vdm.evaluation.real_clips import real_batches, real_data_config
from vdm.evaluation.tasks import evaluate_context_task
from vdm.files.verify import sha256_of
from vdm.inference.generation import sampler_name
from vdm.inference.run import run_dir_of

TASKS = ("generate", "predict", "interpolate", "adherence")


def check_config(cfg: DictConfig) -> str:
    """The task of ``cfg``, after the checks that need nothing loaded."""
    check_sample_config(cfg)
    task = cfg.get("task") or "generate"
    if task not in TASKS:
        raise UserError(f"Unknown task={task}: use generate, predict, interpolate or adherence.")
    clip = OmegaConf.select(cfg, "clip.path")
    if clip and task not in ("generate", "adherence"):
        raise UserError(f"clip.path scores task=generate and adherence: set clip.path=null for "
                        f"task={task}.")  # fmt: skip
    # CLIP-score alone needs no FVD extractor
    keys = ("ckpt_path", "fvd.extractor") if task == "generate" and not clip else ("ckpt_path",)
    for key in keys:
        if OmegaConf.is_missing(cfg, key) or not OmegaConf.select(cfg, key):
            raise UserError(
                f"{key} is missing: python -m vdm.evaluate ckpt_path=<run dir>/checkpoints/"
                "last.ckpt fvd.extractor=/path/to/i3d_torchscript.pt"
            )
    return task


def default_samples(task: str) -> int:
    """``num_samples`` when null: 256 clips for FVD, 4 samples per clip for prediction, 64
    prompted clips for adherence."""
    return {"generate": 256, "adherence": 64}.get(task, 4)


def run(cfg: DictConfig) -> dict:
    """Evaluate as ``cfg`` (conf/evaluate.yaml) says; return the written report."""
    task = check_config(cfg)
    fvd = None
    if cfg.fvd.get("extractor"):  # checked before the model loads: a missing file fails fast
        fvd = FrechetVideoDistance(cfg.fvd.extractor, feature_dim=cfg.fvd.feature_dim)
    clip = None
    if cfg.clip.get("path"):  # likewise
        clip = ClipScore(cfg.clip.path, cfg.clip.frame_stride)
    loaded = load_configured_run(cfg, "vdm.evaluate")
    model, run_cfg = loaded.model, loaded.config
    if fvd is not None:
        fvd = fvd.to(model.device)
    if clip is not None:
        if not model.takes_text:
            raise UserError(
                f"clip.path is set, but CLIP-score needs a text-conditional checkpoint: "
                f"ckpt_path={cfg.ckpt_path} takes no prompt (set clip.path=null)."
            )
        clip.to(model.device)
    if task in ("predict", "interpolate") and not model.frame_conditioning:
        raise UserError(
            f"task={task} needs a checkpoint trained with frame masks (python train.py "
            f"context=mixed); ckpt_path={cfg.ckpt_path} was trained with context=none."
        )
    sampler = sampler_for(cfg, loaded)
    data_cfg = real_data_config(cfg.get("data"), run_cfg, cfg.frames, cfg.batch_size)
    if data_cfg.size != run_cfg.data.size:
        raise UserError(
            f"data.size={data_cfg.size} differs from the model's {run_cfg.data.size} px: set "
            f"data.size={run_cfg.data.size} so real and generated clips share a resolution."
        )
    guidance = loaded.guidance(cfg.guidance_scale)
    samples = cfg.num_samples or default_samples(task)
    options = dict(seed=cfg.seed, precision=cfg.precision)
    start = time.perf_counter()
    if task == "adherence":
        if not str(data_cfg._target_).endswith("MovingShapesDataModule"):
            raise UserError(
                "task=adherence reads objects back from the frames of the shapes set only: "
                "evaluate a run trained on data=shapes (or pass data=shapes)."
            )
        real = real_batches(data_cfg, cfg.split, samples, cfg.seed, cfg.batch_size)
        metrics, counts = adherence_of_samples(loaded, sampler, real, cfg.batch_size, guidance,
                                               clip=clip, **options)  # fmt: skip
    elif task == "generate":
        real = real_batches(data_cfg, cfg.split, cfg.num_real or samples, cfg.seed, cfg.batch_size)
        metrics, counts = fvd_of_samples(
            loaded, sampler, fvd, real, samples, data_cfg.clip_len, cfg.batch_size, guidance,
            clip=clip, **options,
        )  # fmt: skip
    else:
        real = real_batches(data_cfg, cfg.split, cfg.num_clips, cfg.seed,
                            max(1, cfg.batch_size // samples))  # fmt: skip

        def on_samples(clips: torch.Tensor, videos: torch.Tensor) -> None:
            if fvd is not None:
                fvd.update(clips.to(fvd.device), real=True)
                fvd.update(videos.to(fvd.device), real=False)

        metrics = evaluate_context_task(
            model, sampler, task, real, cfg.context.frames, samples, cfg.batch_size,
            guidance_scale=guidance, on_samples=on_samples, **options,
        )  # fmt: skip
        counts = {"num_clips": metrics.pop("clips"),
                  "samples_per_clip": metrics.pop("samples_per_clip")}  # fmt: skip
        if fvd is not None:
            value = float(fvd.compute())
            metrics["fvd"] = value if math.isfinite(value) else None
    seconds = time.perf_counter() - start

    name = sampler_name(sampler, model.diffusion.num_steps)
    stem = f"{Path(cfg.ckpt_path).stem}-{name}-n{samples}-seed{cfg.seed}"
    if task in ("predict", "interpolate"):
        stem += f"-{task}{cfg.context.frames}"
    elif task == "adherence":
        stem += "-adherence"
    out = Path(cfg.out or run_dir_of(cfg.ckpt_path) / "eval" / f"{stem}.json")
    extractor = None
    if fvd is not None:
        extractor = {
            "path": str(Path(cfg.fvd.extractor).expanduser().resolve()),
            "sha256": sha256_of(Path(cfg.fvd.extractor).expanduser()),
            "feature_dim": cfg.fvd.feature_dim,
            "input": "(N, C, T, H, W) in [-1, 1], resize=True, rescale=False",
        }
    protocol = {
        "task": task,
        "checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()),
        "global_step": loaded.global_step,
        "weights": loaded.weights,
        **counts,
        "real_data": {
            "target": data_cfg._target_,
            "root": data_cfg.get("root") or data_cfg.get("data_dir"),
            "split": cfg.split,
            "clip_choice": "centre window" if cfg.split == "val" else "random window",
            "subset": f"random, seed {cfg.seed}",
        },
        "frames": data_cfg.clip_len,
        "frame_stride": data_cfg.get("frame_stride", 1),
        "resolution": [run_cfg.data.size, run_cfg.data.size],
        "extractor": extractor,
        "clip_score": clip.protocol() if clip is not None else None,
        "sampler": {"name": name, **OmegaConf.to_container(sampler_config(cfg, loaded))},
        "guidance_scale": guidance,
        "labels": "classes in equal blocks" if model.num_classes else None,
        "seed": cfg.seed,
        "precision": cfg.precision,
    }
    if model.takes_text:
        protocol["prompts"] = "the real clips' captions"
    if task in ("predict", "interpolate"):
        protocol["labels"] = "the real clips' labels" if model.num_classes else None
        protocol["context_frames"] = cfg.context.frames
    report = {
        "metrics": metrics,
        "protocol": protocol,
        "environment": {
            "vdm": version("vdm"),
            "torch": torch.__version__,
            "device": str(model.device),
            "machine": platform.platform(),
            "seconds": round(seconds, 1),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{summary_line(task, metrics, counts)}. Wrote {out}")
    return report


def summary_line(task: str, metrics: dict, counts: dict) -> str:
    """One line of the headline numbers."""
    clip = ""
    if "clip_score" in metrics:
        real = metrics["clip_score_real"]
        clip = f"CLIP-score {metrics['clip_score']:.2f} (real clips {real:.2f})"
    if task == "generate":
        fvd = metrics.get("fvd")
        parts = [] if "fvd" not in metrics else [f"FVD {fvd:.2f}" if fvd is not None else
                                                 "FVD not finite (too few clips?)"]  # fmt: skip
        parts += [clip] if clip else []
        return (
            f"{', '.join(parts)} ({counts['num_generated']} generated vs {counts['num_real']} "
            "real clips)"
        )
    if task == "adherence":
        model, real, shuffled = (metrics[k]["all"] for k in ("model", "real", "shuffled"))
        columns = ", ".join(f"{k} {v:.2f}" for k, v in metrics["model"].items())
        return (
            f"caption adherence over {counts['num_clips']} clips: {columns} (all: real clips "
            f"{real:.2f}, samples against other prompts {shuffled:.2f}; model {model:.2f})"
            + (f"; {clip}" if clip else "")
        )
    model, base, plain = metrics["model"], metrics["baseline"], metrics["unconditional"]
    return (
        f"{task}: PSNR {model['psnr']['mean']:.2f} dB (best of {counts['samples_per_clip']}: "
        f"{model['psnr']['best']:.2f}), SSIM {model['ssim']['mean']:.3f}; baseline PSNR "
        f"{base['psnr']['mean']:.2f} dB, unconditional {plain['psnr']['mean']:.2f} dB, over "
        f"{counts['num_clips']} clips"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


def main() -> None:
    """``vdm-evaluate [overrides]``, as conf/evaluate.yaml and the overrides say."""
    check_overrides("evaluate", sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
