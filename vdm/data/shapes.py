"""The embedded moving-shapes data set: bouncing circles, squares and triangles as MP4 files.

Clips are rendered once from a seed and written as lossless video files, laid out like any
labelled folder of videos so they are read through the real decode path::

    <data_dir>/moving_shapes/<spec digest>/{train,val}/{circle,square,triangle}/clip_00042.mp4
                                                                               /clip_00042.txt

The clip index (5 digits) counts within its split; sorted class folders give labels 0, 1, 2.
Beside each clip, ``clip_XXXXX.txt`` (UTF-8, one line) is its caption: every object's size,
colour, shape and direction at the start of the clip, in one of a few phrasings
(:mod:`vdm.data.shape_captions`). The phrasing comes from a generator of its own, so captions
leave the frames exactly as they were.

The spec, which other tools rely on exactly: square frames of ``size`` px on black; 1 or 2
objects per clip, all of the clip's class; each object one solid palette colour, distinct
within a clip, drawn without anti-aliasing (a pixel is inside iff its centre is); radius /
half side / circumradius uniform in ``[size/8, size/5]``; each starts fully inside the frame
and moves at a constant speed uniform in ``[1, 2.5]·size/32`` px per frame in a uniform
direction, bouncing elastically so that its bounding extent stays inside the frame; later
objects are drawn over earlier ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vdm.errors import UserError
from vdm.files.video import write_mp4

logger = logging.getLogger(__name__)

# Part of every digest: bump it whenever the rendering changes, so old sets are not reused.
# 2: captions (clip_XXXXX.txt) beside the clips.
FORMAT_VERSION = 2
CLASSES = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
SPLITS = ("train", "val")
MARKER = ".complete"
# Object size (radius, half side or circumradius) and speed, as fractions of the frame size.
MIN_RADIUS, MAX_RADIUS = 1 / 8, 1 / 5
MIN_SPEED, MAX_SPEED = 1 / 32, 2.5 / 32
# Clips per task when rendering in worker processes: large enough to amortise the overhead.
CHUNK = 100


@dataclass(frozen=True)
class ShapesSpec:
    """What to render; two equal specs give byte-identical data sets.

    Args:
        size: frame height and width in pixels.
        num_frames: frames per clip.
        fps: frame rate stored in the files.
        num_train: clips in ``train``.
        num_val: clips in ``val``.
        seed: seed of the whole set; clip ``i`` of a split depends only on
            ``(seed, split, i)``, not on how many clips are rendered.
    """

    size: int = 32
    num_frames: int = 16
    fps: int = 8
    num_train: int = 2000
    num_val: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        # Below 8 px the smallest object is under one pixel; the codec needs a frame.
        if self.size < 8 or self.num_frames < 1 or self.fps <= 0:
            raise UserError(
                f"ShapesSpec needs size >= 8, num_frames >= 1 and fps > 0, got size={self.size}, "
                f"num_frames={self.num_frames}, fps={self.fps}: fix the data config."
            )
        if self.num_train < 0 or self.num_val < 0 or self.seed < 0:
            raise UserError(
                f"ShapesSpec needs num_train, num_val and seed >= 0, got {self.num_train}, "
                f"{self.num_val}, {self.seed}: fix the data config."
            )

    def digest(self) -> str:
        """Short stable hash of the fields and :data:`FORMAT_VERSION`: the set's folder name.

        Returns:
            12 lowercase hex digits.
        """
        fields = {"format_version": FORMAT_VERSION, **asdict(self)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def num_clips(self, split: str) -> int:
        """Clips in ``split`` (``train`` or ``val``).

        Args:
            split: ``train`` or ``val``.

        Returns:
            ``num_train`` or ``num_val``.
        """
        return {"train": self.num_train, "val": self.num_val}[split]


@dataclass(frozen=True)
class ShapeTrack:
    """One object of a clip, before drawing.

    Args:
        shape: one of :data:`CLASSES`.
        colour: a key of :data:`PALETTE`.
        radius: radius, half side or circumradius in pixels.
        centres: ``(T, 2)`` float ``(x, y)`` of the centre (centroid for the triangle) in every
            frame, in pixels from the top-left corner of the frame.
    """

    shape: str
    colour: str
    radius: float
    centres: np.ndarray


def extent(shape: str, radius: float) -> tuple[float, float, float, float]:
    """Distances from an object's centre to its bounding box edges.

    Args:
        shape: one of :data:`CLASSES`.
        radius: radius, half side or circumradius.

    Returns:
        ``(left, right, top, bottom)``, all positive.
    """
    if shape == "triangle":
        # Equilateral, pointing up, centred on its centroid: apex R above, base R/2 below.
        half_base = radius * math.sqrt(3) / 2
        return half_base, half_base, radius, radius / 2
    return radius, radius, radius, radius


def sample_tracks(rng: np.random.Generator, spec: ShapesSpec) -> tuple[list[ShapeTrack], int]:
    """Draw a clip's label and its objects' trajectories.

    Args:
        rng: the clip's generator; the draws happen in a fixed order.
        spec: the data set spec.

    Returns:
        The objects, in drawing order, and the label (index into :data:`CLASSES`).
    """
    label = int(rng.integers(len(CLASSES)))
    count = int(rng.integers(1, 3))
    colours = rng.choice(len(PALETTE), size=count, replace=False)
    steps = np.arange(spec.num_frames, dtype=np.float64)
    tracks = []
    for colour in colours:
        radius = rng.uniform(MIN_RADIUS, MAX_RADIUS) * spec.size
        left, right, top, bottom = extent(CLASSES[label], radius)
        low = np.array([left, top])
        high = np.array([spec.size - right, spec.size - bottom])
        start = rng.uniform(low, high)
        speed = rng.uniform(MIN_SPEED, MAX_SPEED) * spec.size
        angle = rng.uniform(0.0, 2 * math.pi)
        velocity = speed * np.array([math.cos(angle), math.sin(angle)])
        # Elastic bounces in closed form: fold the free path into [low, high] as a triangle
        # wave of period 2·(high - low), which reflects position and velocity at each wall.
        span = high - low
        free = (start - low + steps[:, None] * velocity) % (2 * span)
        centres = low + span - np.abs(free - span)
        tracks.append(ShapeTrack(CLASSES[label], list(PALETTE)[colour], float(radius), centres))
    return tracks, label


def draw(tracks: list[ShapeTrack], spec: ShapesSpec) -> np.ndarray:
    """Rasterise objects onto black frames, later objects over earlier ones.

    Args:
        tracks: the objects, in drawing order.
        spec: the data set spec (frame size and count).

    Returns:
        uint8 ``(T, size, size, 3)``.
    """
    frames = np.zeros((spec.num_frames, spec.size, spec.size, 3), dtype=np.uint8)
    # Pixel centres, broadcast against per-frame object centres (T, 1, 1): no per-pixel loops.
    centre = np.arange(spec.size, dtype=np.float64) + 0.5
    ys, xs = centre[None, :, None], centre[None, None, :]
    for track in tracks:
        dx = xs - track.centres[:, 0, None, None]
        dy = ys - track.centres[:, 1, None, None]
        r = track.radius
        if track.shape == "circle":
            mask = dx**2 + dy**2 <= r**2
        elif track.shape == "square":
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        else:
            # Below the apex (dy = -R) the half width grows as (dy + R)·tan 30°, down to the base.
            mask = (dy <= r / 2) & (np.abs(dx) <= (dy + r) / math.sqrt(3))
        frames[mask] = PALETTE[track.colour]
    return frames


def render_clip(rng: np.random.Generator, spec: ShapesSpec) -> tuple[np.ndarray, int]:
    """Render one clip.

    Args:
        rng: the clip's generator; the same generator state gives the same clip.
        spec: the data set spec.

    Returns:
        uint8 frames ``(T, size, size, 3)`` and the label (index into :data:`CLASSES`).
    """
    tracks, label = sample_tracks(rng, spec)
    return draw(tracks, spec), label


def clip_rng(spec: ShapesSpec, split: str, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of ``split``: independent of every other clip.

    Args:
        spec: the data set spec (its seed).
        split: ``train`` or ``val``.
        index: the clip's index within the split.

    Returns:
        A fresh generator seeded with ``(seed, split id, index)``.
    """
    return np.random.default_rng([spec.seed, SPLITS.index(split), index])


def clip_path(root: Path, split: str, label: int, index: int) -> Path:
    """Where clip ``index`` of ``split`` lives under a set's root.

    Args:
        root: the set's folder (``.../moving_shapes/<digest>``).
        split: ``train`` or ``val``.
        label: index into :data:`CLASSES`.
        index: the clip's index within the split.

    Returns:
        ``root/split/class/clip_XXXXX.mp4``.
    """
    return root / split / CLASSES[label] / f"clip_{index:05d}.mp4"


def generate(data_dir: str | Path, spec: ShapesSpec = ShapesSpec(), num_workers: int = 0) -> Path:
    """Render the set described by ``spec`` unless it is already there.

    The set is rendered into a hidden sibling folder and renamed into place with its
    :data:`MARKER` file only when complete, so an interrupted run leaves nothing that looks
    finished, and of two concurrent callers the second to finish discards its copy.

    Args:
        data_dir: where rendered sets live; the set goes to
            ``data_dir/moving_shapes/<spec.digest()>``.
        spec: what to render.
        num_workers: worker processes; 0 renders in this process.

    Returns:
        The set's root folder.
    """
    root = Path(data_dir).expanduser() / "moving_shapes" / spec.digest()
    if (root / MARKER).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    logger.info(
        "Rendering moving shapes (%d train + %d val clips, %d px, %d frames) into %s",
        spec.num_train,
        spec.num_val,
        spec.size,
        spec.num_frames,
        root,
    )
    started = time.perf_counter()
    # Not tempfile.mkdtemp: its 0700 mode would end up on the published folder.
    staging = root.parent / f".{root.name}.partial-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        counts = _render_all(staging, spec, num_workers)
        marker = {"format_version": FORMAT_VERSION, "spec": asdict(spec), "counts": counts}
        (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        published = _publish(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    elapsed = time.perf_counter() - started
    if published:
        logger.info("Rendered moving shapes in %.1f s", elapsed)
    else:
        logger.info("Moving shapes were rendered meanwhile by another process; using theirs")
    return root


def _render_all(staging: Path, spec: ShapesSpec, num_workers: int) -> dict[str, dict[str, int]]:
    """Render every clip of every split under ``staging``; return clips per split and class."""
    for split in SPLITS:
        for name in CLASSES:
            # Every class folder exists even if empty, so sorted folders always give labels 0..2.
            (staging / split / name).mkdir(parents=True)
    tasks = [
        (split, start, min(start + CHUNK, spec.num_clips(split)))
        for split in SPLITS
        for start in range(0, spec.num_clips(split), CHUNK)
    ]
    if num_workers > 0 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(tasks))) as pool:
            futures = [pool.submit(_render_range, staging, spec, *task) for task in tasks]
            results = [future.result() for future in futures]
    else:
        results = [_render_range(staging, spec, *task) for task in tasks]
    counts = {split: dict.fromkeys(CLASSES, 0) for split in SPLITS}
    for (split, _, _), labels in zip(tasks, results, strict=True):
        for label in labels:
            counts[split][CLASSES[label]] += 1
    return counts


def _render_range(staging: Path, spec: ShapesSpec, split: str, start: int, stop: int) -> list[int]:
    """Render and write clips ``start..stop-1`` of ``split`` and their captions; return their
    labels."""
    # Imported here: shape_captions builds on this module's tracks.
    from vdm.data.shape_captions import clip_caption

    labels = []
    for index in range(start, stop):
        frames, label = render_clip(clip_rng(spec, split, index), spec)
        path = clip_path(staging, split, label, index)
        write_mp4(path, frames, spec.fps, lossless=True)
        text = clip_caption(spec, split, index)
        path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        labels.append(label)
    return labels


def _publish(staging: Path, root: Path) -> bool:
    """Rename the complete ``staging`` to ``root``; False if a complete ``root`` beat us to it."""
    try:
        os.rename(staging, root)
        return True
    except OSError:
        if not root.exists():
            raise  # not a name clash: a real error (permissions, another filesystem)
        if (root / MARKER).is_file():
            return False
    # A folder without the marker under the final name is no finished set of ours (a copy by
    # hand, a removed marker): move it aside and take its place.
    stale = root.with_name(f".{root.name}.stale-{uuid.uuid4().hex}")
    os.rename(root, stale)
    shutil.rmtree(stale, ignore_errors=True)
    os.rename(staging, root)
    return True
