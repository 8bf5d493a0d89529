"""`python -m vdm.evaluate ckpt_path=PATH fvd.extractor=PATH`: FVD of a checkpoint's samples
against real clips, printed and written as JSON together with the protocol that produced it."""

from __future__ import annotations

import hashlib
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

from vdm.diffusion.samplers import Sampler
from vdm.metrics import FrechetVideoDistance
from vdm.sample import (
    class_labels,
    load_run,
    resolve_device,
    run_dir_of,
    sample_as_configured,
    sampler_name,
)
from vdm.train import user_errors_in_one_line

log = logging.getLogger(__name__)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    for batch in DataLoader(subset, batch_size=batch_size, num_workers=workers):
        yield batch["video"]


def run(cfg: DictConfig) -> dict:
    """Evaluate as ``cfg`` (conf/evaluate.yaml) says; return the written report."""
    for key in ("ckpt_path", "fvd.extractor"):
        if OmegaConf.is_missing(cfg, key) or not OmegaConf.select(cfg, key):
            raise ValueError(
                f"{key} is missing: python -m vdm.evaluate ckpt_path=<run dir>/checkpoints/"
                "last.ckpt fvd.extractor=/path/to/i3d_torchscript.pt"
            )
    device = resolve_device(cfg.device)
    fvd = FrechetVideoDistance(cfg.fvd.extractor, feature_dim=cfg.fvd.feature_dim).to(device)
    loaded = load_run(cfg.ckpt_path, device)
    module, run_cfg = loaded.module, loaded.config
    sampler: Sampler = instantiate(cfg.sampler)
    data_cfg = data_config(cfg, run_cfg)
    size = run_cfg.data.size
    if data_cfg.size != size:
        raise ValueError(
            f"data.size={data_cfg.size} differs from the model's {size} px: set data.size={size} "
            "so real and generated clips share a resolution."
        )

    start = time.perf_counter()
    num_real = 0
    for videos in real_clips(data_cfg, cfg.split, cfg.num_real or cfg.num_samples, cfg.seed,
                             cfg.batch_size):  # fmt: skip
        fvd.update(videos.to(device), real=True)
        num_real += len(videos)
    log.info("Extracted features of %d real clips", num_real)
    labels = class_labels(None, cfg.num_samples, module.num_classes)
    generated, guidance = sample_as_configured(cfg, loaded, sampler, labels)
    for i in range(0, len(generated), cfg.batch_size):
        # uint8 → [-1, 1], as the real clips come from 8-bit video: both sides are quantised.
        chunk = torch.from_numpy(generated[i : i + cfg.batch_size]).to(device)
        fvd.update(chunk.permute(0, 4, 1, 2, 3).float() / 127.5 - 1, real=False)
    value = float(fvd.compute())
    seconds = time.perf_counter() - start

    name = sampler_name(sampler, module.diffusion.num_steps)
    out = Path(
        cfg.out
        or run_dir_of(cfg.ckpt_path)
        / "eval"
        / f"{Path(cfg.ckpt_path).stem}-{name}-n{cfg.num_samples}-seed{cfg.seed}.json"
    )
    report = {
        "metrics": {"fvd": value if math.isfinite(value) else None},
        "protocol": {
            "checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()),
            "global_step": loaded.global_step,
            "weights": loaded.weights,
            "num_generated": len(generated),
            "num_real": num_real,
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
            "extractor": {
                "path": str(Path(cfg.fvd.extractor).expanduser().resolve()),
                "sha256": sha256(Path(cfg.fvd.extractor).expanduser()),
                "feature_dim": cfg.fvd.feature_dim,
                "input": "(N, C, T, H, W) in [-1, 1], resize=True, rescale=False",
            },
            "sampler": {"name": name, **OmegaConf.to_container(cfg.sampler, resolve=True)},
            "guidance_scale": guidance,
            "labels": "classes in equal blocks" if labels is not None else None,
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"FVD {value:.2f} ({len(generated)} generated vs {num_real} real clips). Wrote {out}")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


if __name__ == "__main__":
    main()
