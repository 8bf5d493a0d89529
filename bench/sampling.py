"""Seconds per sampled clip for DDPM-1000, DDIM-50 and DPM-Solver++(2M)-20 from a checkpoint.

    python bench/sampling.py [--ckpt outputs/runs/<run>/checkpoints/last.ckpt] [--batch 2]

Samples through the same path as ``python -m vdm.sample`` (its default guidance included: a
class-conditional model runs each step on a doubled batch). Without ``--ckpt`` it takes the
newest ``outputs/runs/*/checkpoints/last.ckpt``; with none, it says so and times the default
model untrained (the cost per step does not depend on the weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _machine import header
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from vdm.inference import DiffusionModel, class_labels, load_run, sample_videos
from vdm.inference.build import build_diffusion, build_model

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = {
    "DDPM-1000": DDPMSampler(),
    "DDIM-50": DDIMSampler(steps=50),
    "DPM-Solver++(2M)-20": DPMSolverSampler(steps=20),
}


def newest_checkpoint() -> Path | None:
    found = sorted((REPO / "outputs" / "runs").glob("*/checkpoints/last.ckpt"),
                   key=lambda p: p.stat().st_mtime)  # fmt: skip
    return found[-1] if found else None


def untrained_default():
    """The default run's model and config, freshly initialised (for timing only)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train")
    return DiffusionModel(build_model(cfg), build_diffusion(cfg)), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=2, help="clips per sampling call")
    args = parser.parse_args()
    ckpt = args.ckpt or newest_checkpoint()
    if ckpt is None:
        print("# no checkpoint given or under outputs/runs: timing the untrained default model")
        model, cfg = untrained_default()
    else:
        loaded = load_run(ckpt)
        model, cfg = loaded.model, loaded.config
        print(f"# {ckpt} (step {loaded.global_step}, {loaded.weights} weights)")
    shape = (cfg.model.in_channels, cfg.data.clip_len, cfg.data.size, cfg.data.size)
    guidance = 1.0
    if model.num_classes:  # the run's sample-video guidance, as vdm.sample uses by default
        guidance = OmegaConf.select(cfg, "callbacks.sample_videos.guidance_scale", default=1.0)
    labels = class_labels(None, args.batch, model.num_classes)
    print(f"{header()}; clips {shape} (C, T, H, W), {args.batch} per call, guidance {guidance:g}")
    print("| sampler | model calls | s per clip | clips/min |")
    print("|---|---:|---:|---:|")
    for name, sampler in SAMPLERS.items():
        calls = len(sampler.timesteps(model.diffusion))
        start = time.perf_counter()
        sample_videos(model, sampler, shape, labels, args.batch, args.batch, guidance)
        per_clip = (time.perf_counter() - start) / args.batch
        print(f"| {name} | {calls} | {per_clip:.2f} | {60 / per_clip:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
