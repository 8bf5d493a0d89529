"""Do clips show what their captions say? Caption adherence of the moving-shapes set and samples.

    python bench/caption_adherence.py [DIR ...] [--size 32] [--clips 48] [--frames 16]

Scores real validation clips of the shapes set against the facts of their own captions (from
their tracks, :func:`vdm.data.shape_captions.describe_tracks`) and against the facts of another
clip's caption (a derangement of the captions across clips): the two ends of the scale. Each
DIR is a folder with a ``samples.npz`` holding ``videos`` (uint8 ``(N, T, H, W, 3)``) and
``prompts`` (one caption per clip), whose prompts are parsed into facts by
:func:`vdm.data.shape_captions.parse_caption`. The columns are those of
:func:`vdm.evaluation.adherence.adherence`: the share of described colours found; among found
objects, the share with the stated shape, size and direction; the share of clips with as many
objects as described; the share of described objects with every fact right.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _machine import header

from vdm.data.shape_captions import ShapeDescription, describe_tracks
from vdm.data.shapes import ShapesSpec, clip_rng, draw, sample_tracks
from vdm.evaluation.adherence import COLUMNS, score_clips


def real_clips(
    count: int, size: int, frames: int
) -> tuple[list[np.ndarray], list[list[ShapeDescription]]]:
    """The first ``count`` validation clips of the shapes set at ``size`` px and ``frames``
    frames, with the facts of their captions."""
    spec = ShapesSpec(size=size, num_frames=frames)
    tracks = [sample_tracks(clip_rng(spec, "val", i), spec)[0] for i in range(count)]
    return [draw(t, spec) for t in tracks], [describe_tracks(t, size) for t in tracks]


def derangement(count: int, seed: int = 0) -> np.ndarray:
    """A random permutation of ``range(count)`` that moves every index (``count`` >= 2)."""
    if count < 2:
        raise SystemExit("caption_adherence: shuffled captions need --clips 2 or more")
    rng = np.random.default_rng(seed)
    while True:  # about e tries: a share 1/e of permutations have no fixed point
        order = rng.permutation(count)
        if (order != np.arange(count)).all():
            return order


def read_samples(folder: Path) -> tuple[list[np.ndarray], list[list[ShapeDescription]]] | None:
    """The clips of ``folder/samples.npz`` and the facts of their prompts; None (with a line
    saying why) when the prompts cannot be parsed yet."""
    path = folder / "samples.npz" if folder.is_dir() else folder
    if not path.is_file():
        raise SystemExit(f"caption_adherence: no samples.npz in {folder}: pass a sample folder")
    with np.load(path) as data:
        if "prompts" not in data:
            raise SystemExit(
                f"caption_adherence: {path} has no prompts: sample a text-conditioned model"
            )
        videos, prompts = data["videos"], [str(p) for p in data["prompts"]]
    try:  # written alongside this script; older checkouts lack it
        from vdm.data.shape_captions import parse_caption
    except ImportError:
        print(f"skipping {folder}: vdm.data.shape_captions has no parse_caption yet")
        return None
    return list(videos), [parse_caption(prompt) for prompt in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", help="folders holding a samples.npz with prompts")
    parser.add_argument("--size", type=int, default=32, help="frame size of the real clips")
    parser.add_argument("--clips", type=int, default=48, help="real clips to score")
    parser.add_argument("--frames", type=int, default=16, help="frames per real clip")
    args = parser.parse_args()
    clips, facts = real_clips(args.clips, args.size, args.frames)
    rows = [
        ("real clips, own captions", len(clips), score_clips(clips, facts)),
        (
            "real clips, other clips' captions",
            len(clips),
            score_clips(clips, [facts[i] for i in derangement(len(clips))]),
        ),
    ]
    for folder in map(Path, args.dirs):
        samples = read_samples(folder)
        if samples is not None:
            rows.append((str(folder), len(samples[0]), score_clips(*samples)))
    print(header())
    print(f"real clips: {args.size}² px, {args.frames} frames")
    print("| clips | n | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for name, count, scores in rows:
        print(f"| {name} | {count} | " + " | ".join(f"{scores[c]:.2f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
