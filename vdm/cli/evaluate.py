"""`python -m vdm.evaluate ckpt_path=PATH fvd.extractor=PATH`: FVD of a checkpoint's samples
against real clips, printed and written as JSON together with the protocol that produced it."""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from importlib.metadata import version
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Subset

from vdm.checkpoint import sha256_of
from vdm.config_check import check_sample_config, check_sampler_fits
from vdm.diffusion.samplers import Sampler
from vdm.metrics import FrechetVideoDistance
from vdm.prediction import evaluate_context_task
from vdm.sample import (
    class_labels,
    guidance_for,
    load_run,
    resolve_device,
    run_dir_of,
    sample_as_configured,
    sampler_name,
)
from vdm.train import compile_denoiser, user_errors_in_one_line

log = logging.getLogger(__name__)


def data_config(cfg: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The real clips' data config: ``cfg.data`` if given, else the training run's, with the
    evaluation's clip length and batch size."""
    data = OmegaConf.create(
        OmegaConf.to_container(cfg.data if cfg.get("data") else run_cfg.data, resolve=True)
    )
    with open_dict(data):
        data.clip_len = cfg.frames or run_cfg.data.clip_len
        data.batch_size = cfg.batch_size
    return data


def real_clips(data_cfg: DictConfig, split: str, count: int, seed: int, batch_size: int):
    """Batches of ``count`` clips (fewer if the split is smaller) drawn at random from ``split``,
    as the data module decodes them (centre windows for validation). Yields ``(B, C, T, H, W)``."""
    for batch in real_batches(data_cfg, split, count, seed, batch_size):
        yield batch["video"]


def real_batches(data_cfg: DictConfig, split: str, count: int, seed: int, batch_size: int):
    """As :func:`real_clips`, but yields whole batches (``video``, ``label``, ``fps``)."""
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    dataset = {"val": datamodule.val_set, "train": datamodule.train_set}.get(split)
    if dataset is None:
        raise ValueError(f"split={split}: use val or train.")
    if len(dataset) < count:
        log.warning("split=%s has %d clips, fewer than %d: using all", split, len(dataset), count)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    subset = Subset(dataset, order[:count].tolist())
    workers = data_cfg.get("num_workers", 0)
    yield from DataLoader(subset, batch_size=batch_size, num_workers=workers)


def check_config(cfg: DictConfig) -> str:
    """The task of ``cfg``, after the checks that need nothing loaded."""
    check_sample_config(cfg)
    task = cfg.get("task") or "generate"
    if task not in ("generate", "predict", "interpolate"):
        raise ValueError(f"Unknown task={task}: use generate, predict or interpolate.")
    keys = ("ckpt_path", "fvd.extractor") if task == "generate" else ("ckpt_path",)
    for key in keys:
        if OmegaConf.is_missing(cfg, key) or not OmegaConf.select(cfg, key):
            raise ValueError(
                f"{key} is missing: python -m vdm.evaluate ckpt_path=<run dir>/checkpoints/"
                "last.ckpt fvd.extractor=/path/to/i3d_torchscript.pt"
            )
    return task


def fvd_metric(cfg: DictConfig, device: torch.device) -> FrechetVideoDistance | None:
    """The FVD metric of ``cfg.fvd`` (None without an extractor)."""
    if not cfg.fvd.get("extractor"):
        return None
    return FrechetVideoDistance(cfg.fvd.extractor, feature_dim=cfg.fvd.feature_dim).to(device)


def run(cfg: DictConfig) -> dict:
    """Evaluate as ``cfg`` (conf/evaluate.yaml) says; return the written report."""
    task = check_config(cfg)
    device = resolve_device(cfg.device)
    fvd = fvd_metric(cfg, device)
    loaded = load_run(cfg.ckpt_path, device)
    module, run_cfg = loaded.module, loaded.config
    if cfg.get("compile"):
        compile_denoiser(module)
    if task != "generate" and not module.frame_conditioning:
        raise ValueError(
            f"task={task} needs a checkpoint trained with frame masks (python train.py "
            f"context=mixed); ckpt_path={cfg.ckpt_path} was trained with context=none."
        )
    check_sampler_fits(cfg.sampler, run_cfg.diffusion, f"ckpt_path={cfg.ckpt_path}")
    sampler: Sampler = instantiate(cfg.sampler)
    data_cfg = data_config(cfg, run_cfg)
    size = run_cfg.data.size
    if data_cfg.size != size:
        raise ValueError(
            f"data.size={data_cfg.size} differs from the model's {size} px: set data.size={size} "
            "so real and generated clips share a resolution."
        )
    guidance = guidance_for(cfg.guidance_scale, run_cfg, module.num_classes)
    start = time.perf_counter()
    if task == "generate":
        metrics, counts = fvd_of_samples(cfg, loaded, sampler, data_cfg, fvd, device)
    else:
        metrics, counts = context_task_metrics(cfg, task, module, sampler, data_cfg, fvd, guidance)
    seconds = time.perf_counter() - start

    name = sampler_name(sampler, module.diffusion.num_steps)
    stem = f"{Path(cfg.ckpt_path).stem}-{name}-n{cfg.num_samples or default_samples(task)}"
    stem += f"-seed{cfg.seed}" + ("" if task == "generate" else f"-{task}{cfg.context.frames}")
    out = Path(cfg.out or run_dir_of(cfg.ckpt_path) / "eval" / f"{stem}.json")
    extractor = None
    if fvd is not None:
        extractor = {
            "path": str(Path(cfg.fvd.extractor).expanduser().resolve()),
            "sha256": sha256_of(Path(cfg.fvd.extractor).expanduser()),
            "feature_dim": cfg.fvd.feature_dim,
            "input": "(N, C, T, H, W) in [-1, 1], resize=True, rescale=False",
        }
    report = {
        "metrics": metrics,
        "protocol": {
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
            "resolution": [size, size],
            "extractor": extractor,
            "sampler": {"name": name, **OmegaConf.to_container(cfg.sampler, resolve=True)},
            "guidance_scale": guidance,
            "labels": "classes in equal blocks" if module.num_classes else None,
            "seed": cfg.seed,
            "precision": cfg.precision,
        },
        "environment": {
            "vdm": version("vdm"),
            "torch": torch.__version__,
            "device": str(device),
            "machine": platform.platform(),
            "seconds": round(seconds, 1),
        },
    }
    if task != "generate":
        report["protocol"]["labels"] = "the real clips' labels" if module.num_classes else None
        report["protocol"]["context_frames"] = cfg.context.frames
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{summary_line(task, metrics, counts)}. Wrote {out}")
    return report


def default_samples(task: str) -> int:
    """``num_samples`` when null: 256 clips for FVD, 4 samples per clip for prediction."""
    return 256 if task == "generate" else 4


def fvd_of_samples(cfg, loaded, sampler, data_cfg, fvd, device) -> tuple[dict, dict]:
    """FVD of ``num_samples`` generated clips against ``num_real`` real ones."""
    module = loaded.module
    num_samples = cfg.num_samples or default_samples("generate")
    num_real = 0
    for videos in real_clips(data_cfg, cfg.split, cfg.num_real or num_samples, cfg.seed,
                             cfg.batch_size):  # fmt: skip
        fvd.update(videos.to(device), real=True)
        num_real += len(videos)
    log.info("Extracted features of %d real clips", num_real)
    labels = class_labels(None, num_samples, module.num_classes)
    generated, _ = sample_as_configured(cfg, loaded, sampler, labels, num_samples=num_samples)
    for i in range(0, len(generated), cfg.batch_size):
        # uint8 → [-1, 1], as the real clips come from 8-bit video: both sides are quantised.
        chunk = torch.from_numpy(generated[i : i + cfg.batch_size]).to(device)
        fvd.update(chunk.permute(0, 4, 1, 2, 3).float() / 127.5 - 1, real=False)
    value = float(fvd.compute())
    metrics = {"fvd": value if math.isfinite(value) else None}
    return metrics, {"num_generated": len(generated), "num_real": num_real}


def context_task_metrics(cfg, task, module, sampler, data_cfg, fvd, guidance) -> tuple[dict, dict]:
    """PSNR / SSIM of prediction or interpolation on ``num_clips`` real clips (vdm.prediction),
    and FVD of the completed clips when an extractor is given."""
    per_clip = cfg.num_samples or default_samples(task)
    clips = cfg.get("num_clips") or 64

    def on_samples(real: torch.Tensor, samples: torch.Tensor) -> None:
        if fvd is not None:
            fvd.update(real.to(fvd.device), real=True)
            fvd.update(samples.to(fvd.device), real=False)

    batches = real_batches(data_cfg, cfg.split, clips, cfg.seed, max(1, cfg.batch_size // per_clip))
    result = evaluate_context_task(
        module, sampler, task, batches, cfg.context.frames, per_clip, cfg.batch_size,
        guidance_scale=guidance, seed=cfg.seed, precision=cfg.precision, on_samples=on_samples,
    )  # fmt: skip
    counts = {"num_clips": result.pop("clips"), "samples_per_clip": result.pop("samples_per_clip")}
    if fvd is not None:
        value = float(fvd.compute())
        result["fvd"] = value if math.isfinite(value) else None
    return result, counts


def summary_line(task: str, metrics: dict, counts: dict) -> str:
    """One line of the headline numbers."""
    if task == "generate":
        return (
            f"FVD {metrics['fvd']:.2f} ({counts['num_generated']} generated vs "
            f"{counts['num_real']} real clips)"
        )
    model, base, plain = metrics["model"], metrics["baseline"], metrics["unconditional"]
    return (
        f"{task}: PSNR {model['psnr']['mean']:.2f} dB (best of {counts['samples_per_clip']}: "
        f"{model['psnr']['best']:.2f}), SSIM {model['ssim']['mean']:.3f}; baseline PSNR "
        f"{base['psnr']['mean']:.2f} dB, unconditional {plain['psnr']['mean']:.2f} dB, over "
        f"{counts['num_clips']} clips"
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


if __name__ == "__main__":
    main()
