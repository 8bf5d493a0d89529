"""How well sampled moving-shapes clips hold together: colour purity, frame match, colour stability,
colours used.

    python bench/shapes_quality.py [DIR ...] [--size 32] [--real 60]

Each DIR is a folder of sample clips (``<run dir>/samples/step_XXXXXX``) or a run directory
(all its sample folders). Without DIR it scores the newest run under ``outputs/runs``. Next to
the samples it scores real clips of the shapes set and the same real frames shuffled across
clips: the two ends of the scale. The tables in docs/experiments.md come from this script.

- *purity*: each foreground blob's share of pixels with its majority palette colour, averaged
  over blobs by size. Overlapping objects make one blob, so real clips score below 1 (~0.85).
- *one-colour*: the share of blobs whose purity is at least 0.9.
- *frame match*: the share of foreground pixels in frame f+1 that have a pixel of the same
  palette colour within 3 px (Chebyshev) in frame f. Objects move at most 2.5 px a frame, so
  real clips score 1.
- *colour stability*: one minus the total-variation distance between the palette-colour
  histograms of the foreground of neighbouring frames. Real clips score about 0.99.
- *colours*: how many palette colours the set uses, as the exponential of the entropy of the
  palette-colour histogram of all foreground pixels: 6 when the six are used equally, 1 when
  everything is one colour. The other scores cannot see a model that paints every object the
  same colour (a pure, stable, wrong clip); this one can. Real clips use about 6.
- *empty frames*: the share of frames without an object (no blob of ``MIN_BLOB`` px). Real
  clips have none. Frame match skips pairs whose later frame is empty, so read the two
  together: a model whose objects vanish can score a high frame match.

Frames are read back at the model's resolution: sample files are upscaled by nearest
neighbour, so the centre pixel of each upscaled block is the model's pixel.
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np
from _machine import header
from scipy import ndimage

from vdm.data.reader import VideoReader
from vdm.data.shapes import ShapesSpec, clip_rng, render_clip

# The palette segmentation is shared with the caption-adherence scorer (context_tasks.py
# imports COLOURS and palette_labels from here too).
from vdm.evaluation.shape_detection import COLOURS, MIN_BLOB, palette_labels

REPO = Path(__file__).resolve().parents[1]
MATCH_RADIUS = 3  # px at 32², where objects move at most 2.5 px a frame; scaled with the size


def blob_purities(labels: np.ndarray) -> tuple[list[float], list[int]]:
    """Purity and size of every 4-connected foreground blob of ``MIN_BLOB`` px or more."""
    purities, sizes = [], []
    for frame in labels:
        blobs, count = ndimage.label(frame >= 0)
        for i in range(1, count + 1):
            colours = frame[blobs == i]
            if colours.size < MIN_BLOB:
                continue
            purities.append(np.bincount(colours, minlength=len(COLOURS)).max() / colours.size)
            sizes.append(colours.size)
    return purities, sizes


def frame_match(labels: np.ndarray, radius: int = MATCH_RADIUS) -> float:
    """Mean over neighbouring frame pairs (with foreground in the later frame) of the share of
    the later frame's foreground that finds its colour within ``radius`` px in the earlier."""
    square = np.ones((3, 3), dtype=bool)
    shares = []
    for before, after in itertools.pairwise(labels):
        foreground = after >= 0
        if not foreground.any():
            continue
        found = np.zeros_like(foreground)
        for colour in range(len(COLOURS)):
            near = ndimage.binary_dilation(before == colour, structure=square, iterations=radius)
            found |= (after == colour) & near
        shares.append(found.sum() / foreground.sum())
    return float(np.mean(shares)) if shares else float("nan")


def colour_stability(labels: np.ndarray) -> float:
    """One minus the mean total-variation distance between neighbouring frames' palette-colour
    histograms (a frame without foreground has an all-zero histogram)."""
    hists = []
    for frame in labels:
        colours = frame[frame >= 0]
        hists.append(np.bincount(colours, minlength=len(COLOURS)) / max(colours.size, 1))
    distances = [0.5 * np.abs(a - b).sum() for a, b in itertools.pairwise(hists)]
    return 1.0 - float(np.mean(distances)) if distances else float("nan")


def finite_mean(values: list[float]) -> float:
    """Mean of the values that are not NaN (clips too short or empty to score); NaN if none."""
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def empty_share(labels: np.ndarray) -> float:
    """Share of the clip's frames without a blob of ``MIN_BLOB`` px or more."""
    return float(np.mean([not blob_purities(frame[None])[1] for frame in labels]))


def colours_used(labels: list[np.ndarray]) -> float:
    """The effective number of palette colours of the foreground of all ``labels``: the
    exponential of its histogram's entropy (NaN without foreground)."""
    counts = np.bincount(np.concatenate([lab[lab >= 0] for lab in labels]), minlength=len(COLOURS))
    if not counts.sum():
        return float("nan")
    shares = counts[counts > 0] / counts.sum()
    return float(np.exp(-(shares * np.log(shares)).sum()))


def score(clips: list[np.ndarray], size: int = 32) -> dict[str, float]:
    """The six scores over uint8 clips ``(T, H, W, 3)`` of ``size`` px (objects move
    ``size / 32`` times farther per frame at larger sizes: so does the frame-match radius)."""
    radius = max(MATCH_RADIUS, math.ceil(MATCH_RADIUS * size / 32))
    labels = [palette_labels(clip) for clip in clips]
    purities, sizes = [], []
    for clip in labels:
        p, s = blob_purities(clip)
        purities += p
        sizes += s
    purities = np.array(purities)
    return {
        "clips": len(clips),
        "purity": float(np.average(purities, weights=sizes)) if sizes else float("nan"),
        "one-colour": float((purities >= 0.9).mean()) if sizes else float("nan"),
        "frame match": finite_mean([frame_match(c, radius) for c in labels]),
        "colour stability": finite_mean([colour_stability(c) for c in labels]),
        "colours": colours_used(labels),
        "empty frames": float(np.mean([empty_share(c) for c in labels])),
    }


def read_samples(folder: Path, size: int) -> list[np.ndarray]:
    """The folder's ``sample_*.mp4`` clips at the model's ``size``."""
    clips = []
    for path in sorted(folder.glob("sample_*.mp4")):
        reader = VideoReader(path)
        frames = reader.get_batch(list(range(len(reader))))
        up = frames.shape[1] // size
        clips.append(frames[:, up // 2 :: up, up // 2 :: up])
    return clips


def real_clips(count: int, size: int, frames: int) -> list[np.ndarray]:
    """The first ``count`` validation clips of the default shapes set, cut to ``frames``."""
    spec = ShapesSpec(size=size)
    return [render_clip(clip_rng(spec, "val", i), spec)[0][:frames] for i in range(count)]


def shuffled(clips: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Clips whose frame f comes from a random clip, for every f: no coherence at all."""
    rng = np.random.default_rng(seed)
    frames = clips[0].shape[0]
    return [np.stack([clips[rng.integers(len(clips))][f] for f in range(frames)]) for _ in clips]


def sample_folders(paths: list[str]) -> list[Path]:
    """The sample folders under each path (a run, its ``samples`` or one step's folder); with
    no paths, those of the newest run. A given path without sample clips is an error."""
    if not paths:
        runs = sorted(
            (REPO / "outputs" / "runs").glob("*/samples"), key=lambda p: p.stat().st_mtime
        )
        paths = [str(runs[-1])] if runs else []
    folders = []
    for path in map(Path, paths):
        found = sorted(path.glob("step_*")) if path.name == "samples" else []
        found += sorted((path / "samples").glob("step_*")) if (path / "samples").is_dir() else []
        found += [path] if any(path.glob("sample_*.mp4")) else []
        if not found:
            raise SystemExit(
                f"shapes_quality: no sample clips under {path}: pass a run directory, its "
                "samples/ folder or a samples/step_XXXXXX folder"
            )
        folders += found
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", help="sample folders or run directories")
    parser.add_argument("--size", type=int, default=32, help="the model's frame size")
    parser.add_argument("--real", type=int, default=60, help="real clips to score")
    args = parser.parse_args()
    folders = sample_folders(args.dirs)
    if not folders:  # make bench runs this with no arguments, also before any training
        print("no sample clips found (train first: python train.py); the real references only")
    rows = [(str(f), score(read_samples(f, args.size), args.size)) for f in folders]
    frames = read_samples(folders[0], args.size)[0].shape[0] if folders else 8
    real = real_clips(args.real, args.size, frames)
    rows += [
        ("real clips", score(real, args.size)),
        ("real frames, shuffled across clips", score(shuffled(real), args.size)),
    ]
    keys = ["clips", "purity", "one-colour", "frame match", "colour stability", "colours"]
    keys.append("empty frames")
    print(header())
    print("| samples | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, s in rows:
        print(f"| {name} | {s['clips']} | " + " | ".join(f"{s[k]:.2f}" for k in keys[1:]) + " |")


if __name__ == "__main__":
    main()
