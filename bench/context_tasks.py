"""Prediction, interpolation and long videos of a frame-conditioned checkpoint, measured.

    python bench/context_tasks.py --ckpt outputs/runs/<run>/checkpoints/last.ckpt
        [--clips 64] [--per-clip 4] [--long 64] [--png DIR] [--tasks predict,interpolate,long]

On validation clips of the checkpoint's data: prediction (the first 4 of 8 frames given) and
interpolation (the first 2 and last 2 given), each scored by PSNR / SSIM of the generated frames
(mean and best of ``--per-clip`` samples, MCVD's protocol) beside the model-free baseline (the
last given frame copied; a linear cross-fade) and the same model sampled without the frames,
and by ``shapes_quality``'s coherence scores over whole clips (given + generated). Then long
videos: ``--long`` frames, 8-frame windows each given the previous window's last 4, continuing
the first 4 frames of a validation clip; scored for empty frames, and colour stability and frame
match of neighbouring frames inside windows against the pairs at window joins. ``--png`` writes
frame strips (one row per clip) to look at. docs/experiments.md has the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _machine import header
from shapes_quality import COLOURS, frame_match, palette_labels, score

from vdm.diffusion.samplers import DDIMSampler, DPMSolverSampler
from vdm.evaluation.real_clips import real_batches, real_data_config
from vdm.evaluation.tasks import evaluate_context_task
from vdm.files.video import to_uint8
from vdm.inference import load_run
from vdm.inference.generation import sample_long_videos

KEYS = ["purity", "one-colour", "frame match", "colour stability", "empty frames"]


def strip(clips: np.ndarray, upscale: int = 4) -> np.ndarray:
    """uint8 clips ``(N, T, H, W, 3)`` as one image: a row per clip, its frames left to right."""
    n, t, h, w, _ = clips.shape
    image = np.full((n * (h + 1), t * (w + 1), 3), 128, dtype=np.uint8)
    for i in range(n):
        for f in range(t):
            image[i * (h + 1) : i * (h + 1) + h, f * (w + 1) : f * (w + 1) + w] = clips[i, f]
    return image.repeat(upscale, 0).repeat(upscale, 1)


def save_png(path: Path, image: np.ndarray) -> None:
    import av  # PyAV's image encoder: no extra dependency

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def pair_scores(clip_labels: np.ndarray, pairs: list[int]) -> tuple[list[float], list[float]]:
    """Colour stability and frame match of the neighbouring pairs ``(f - 1, f)``, f in pairs."""
    stability, match = [], []
    for f in pairs:
        a, b = clip_labels[f - 1], clip_labels[f]
        hists = [
            np.bincount(x[x >= 0], minlength=len(COLOURS)) / max((x >= 0).sum(), 1) for x in (a, b)
        ]
        stability.append(1 - 0.5 * np.abs(hists[0] - hists[1]).sum())
        m = frame_match(np.stack([a, b]))
        if not np.isnan(m):
            match.append(m)
    return stability, match


def table(rows: list[tuple[str, dict]]) -> None:
    print("| clips | n | " + " | ".join(KEYS) + " |")
    print("|---|---:|" + "---:|" * len(KEYS))
    for name, s in rows:
        print(f"| {name} | {s['clips']} | " + " | ".join(f"{s[k]:.2f}" for k in KEYS) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint trained with context=mixed")
    parser.add_argument("--clips", type=int, default=64, help="validation clips per task")
    parser.add_argument("--per-clip", type=int, default=4, help="samples per clip (best of N)")
    parser.add_argument("--long", type=int, default=64, help="frames of the long videos")
    parser.add_argument("--long-clips", type=int, default=8, help="long videos to sample")
    parser.add_argument("--sampler", choices=["ddim", "dpmpp"], default="dpmpp")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--guidance", type=float, help="guidance scale; default: the run's")
    parser.add_argument("--batch", type=int, default=32, help="clips per forward pass")
    parser.add_argument("--png", type=Path, help="write frame strips here")
    parser.add_argument(
        "--no-unconditional", action="store_true", help="skip sampling without the given frames"
    )
    parser.add_argument(
        "--tasks", default="predict,interpolate,long", help="comma-separated subset to measure"
    )
    args = parser.parse_args()
    print(header())
    if not args.ckpt:  # make bench runs every script bare
        print("no --ckpt given: train one with python train.py context=mixed, then pass it")
        return
    loaded = load_run(args.ckpt)
    model, run_cfg = loaded.model, loaded.config
    sampler = (DDIMSampler if args.sampler == "ddim" else DPMSolverSampler)(steps=args.steps)
    data_cfg = real_data_config(None, run_cfg, None, args.batch)
    guidance = loaded.guidance(args.guidance)
    window = data_cfg.clip_len
    tasks = set(args.tasks.split(","))
    unknown = tasks - {"predict", "interpolate", "long"}
    if unknown:
        parser.error(
            f"--tasks: unknown {', '.join(sorted(unknown))}; use predict, interpolate, long"
        )
    print(f"# {args.ckpt}, step {loaded.global_step}, {loaded.weights} weights, "
          f"{args.sampler}-{args.steps}, guidance {guidance:g}")  # fmt: skip

    for task, given in (("predict", window // 2), ("interpolate", window // 4)):
        if task not in tasks:
            continue
        start = time.perf_counter()
        samples, reals = [], []

        def keep(real: torch.Tensor, videos: torch.Tensor, samples=samples, reals=reals) -> None:
            samples.append(to_uint8(videos))
            reals.append(to_uint8(real))

        batches = real_batches(data_cfg, "val", args.clips, 0, max(1, args.batch // args.per_clip))
        result = evaluate_context_task(
            model, sampler, task, batches, given, args.per_clip, args.batch,
            guidance_scale=guidance, on_samples=keep, unconditional=not args.no_unconditional,
        )  # fmt: skip
        generated, real = np.concatenate(samples), np.concatenate(reals)
        print(f"\n## {task}, {given} given, {result['clips']} clips × {args.per_clip} samples "
              f"({time.perf_counter() - start:.0f} s)\n")  # fmt: skip
        print("| | PSNR mean | PSNR best | SSIM mean | SSIM best |\n|---|---:|---:|---:|---:|")
        for name in ("model", "unconditional", "baseline"):
            if name not in result:
                continue
            m = result[name]
            print(f"| {name} | {m['psnr']['mean']:.2f} | {m['psnr']['best']:.2f} | "
                  f"{m['ssim']['mean']:.3f} | {m['ssim']['best']:.3f} |")  # fmt: skip
        print()
        table([(f"{task}: given + generated", score(list(generated))), ("real", score(list(real)))])
        if args.png:
            first = generated[:: args.per_clip][:8]
            save_png(args.png / f"{task}.png", strip(np.concatenate([first, real[:8]])))
    if "long" in tasks:
        measure_long(model, sampler, data_cfg, args, guidance)


def measure_long(model, sampler, data_cfg, args: argparse.Namespace, guidance: float) -> None:
    """Long videos continuing validation clips: empty frames, and neighbouring-frame scores
    inside windows against those at window joins."""
    window = data_cfg.clip_len
    start = time.perf_counter()
    batch = next(iter(real_batches(data_cfg, "val", args.long_clips, 1, args.long_clips)))
    overlap = window // 2
    labels = batch["label"].tolist() if model.num_classes and "label" in batch else None
    openings = batch["video"][:, :, :overlap]
    # Every clip continues its own opening, all clips in one batch per window.
    videos = sample_long_videos(
        model, sampler, tuple(openings.shape[i] for i in (1, 3, 4)), args.long, window, overlap,
        openings, labels, len(openings), batch_size=args.batch,
        guidance_scale=guidance if labels else 1.0,
    )  # fmt: skip
    clips = to_uint8(videos)
    joins = list(range(window, args.long, window - overlap))
    inside = [f for f in range(overlap + 1, args.long) if f not in joins]
    stats = {"inside windows": ([], []), "at window joins": ([], [])}
    for clip in clips:
        labels_ = palette_labels(clip)
        for name, pairs in (("inside windows", inside), ("at window joins", joins)):
            s, m = pair_scores(labels_, pairs)
            stats[name][0].extend(s)
            stats[name][1].extend(m)
    whole = score(list(clips))
    last = score([c[-16:] for c in clips])
    print(f"\n## long videos: {args.long} frames, windows of {window} given {overlap}, "
          f"{len(clips)} clips ({time.perf_counter() - start:.0f} s)\n")  # fmt: skip
    table([("all frames", whole), ("last 16 frames", last)])
    print("\n| neighbouring pairs | colour stability | frame match |\n|---|---:|---:|")
    for name, (s, m) in stats.items():
        print(f"| {name} ({len(s)} pairs) | {np.mean(s):.2f} | {np.mean(m):.2f} |")
    if args.png:
        save_png(args.png / "long.png", strip(clips[:4]))


if __name__ == "__main__":
    main()
