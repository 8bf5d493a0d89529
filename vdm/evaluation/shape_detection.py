"""The objects of a moving-shapes clip, read back from its pixels: colour, shape, size, motion.

The objects of a shapes clip are told apart by colour: each has its own palette colour
(:mod:`vdm.data.shapes`). For each colour, the largest 4-connected blob of its pixels in a frame
is the object there, and a colour is an object when it is there in at least half the frames.
Its facts are then read as the captions state them (:mod:`vdm.data.shape_captions`):

- *shape*: a square fills its bounding box, a circle π/4 of it, a triangle (pointing up) half,
  with its centroid a sixth of the box's height below the box's middle;
- *size*: the radius of that shape with the blob's area, against the middle of the radius range;
- *motion*: the velocity of the blob at the start of the clip (:func:`start_velocity`).

Shape and size come from the frames where the blob touches no other colour, so an object that
passes behind another is read from the frames where it is whole.
:mod:`vdm.evaluation.adherence` scores these against a caption's facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from vdm.data.shape_captions import direction_of
from vdm.data.shapes import MAX_RADIUS, MAX_SPEED, MIN_RADIUS, MIN_SPEED, PALETTE

COLOURS = np.array(list(PALETTE.values()), dtype=np.float64)  # (6, 3)
# A pixel is foreground when its brightest channel passes this: palette colours have a 255
# channel and the background is 0, so the threshold sits between with room for sampling noise.
FOREGROUND = 110
MIN_BLOB = 6  # pixels at 32², about a quarter of the smallest object; smaller specks are noise
# A colour is an object when its blob is in at least this share of the frames: a real object is
# there all clip long (bar spells behind another), a colour flickering in a sample is not.
PRESENT = 0.5
# Fill of the bounding box: square 1, circle π/4, triangle 1/2; the boundaries sit halfway.
SQUARE_FILL = (1 + math.pi / 4) / 2
TRIANGLE_FILL = (math.pi / 4 + 1 / 2) / 2
# How far the centroid lies below the middle of the bounding box, in box heights: 1/6 for a
# triangle pointing up, 0 for a circle or square. Halfway between tells the small triangles,
# whose rasters fill much more of their box than a half, from circles.
BOTTOM_HEAVY = 1 / 12
UNIT_AREA = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}  # at radius 1
MIDDLE_RADIUS = (MIN_RADIUS + MAX_RADIUS) / 2  # the caption's small/large boundary
# Neighbouring frame pairs at the start of a clip that its direction is read from (see
# `_run_mean`): enough to average the raster's jitter away, few enough to end before most
# objects bounce twice.
DIRECTION_PAIRS = 6
# Pixels by which two steps of an object at constant speed may differ: a centroid moves in
# half pixels as the raster gains or loses a row or column, a bounding box edge in whole ones.
STEP_JITTER = 1.0


@dataclass(frozen=True)
class DetectedObject:
    """What a clip shows of one palette colour.

    Args:
        colour: a key of :data:`vdm.data.shapes.PALETTE`.
        shape: ``circle``, ``square`` or ``triangle``.
        radius: radius, half side or circumradius of a ``shape`` of the blob's area, in frame
            sizes.
        velocity: ``(dx, dy)`` px per frame at the start of the clip (y down); None when no
            two neighbouring frames show the object.
        travel: the farthest its centroid gets from where it is first seen, in px.
        frames: how many frames show it.
        frame_size: the frame side in pixels.
    """

    colour: str
    shape: str
    radius: float
    velocity: tuple[float, float] | None
    travel: float
    frames: int
    frame_size: int

    @property
    def size(self) -> str:
        """``small`` below the middle of the radius range, else ``large``."""
        return "small" if self.radius < MIDDLE_RADIUS else "large"

    @property
    def direction(self) -> str | None:
        """The larger component of the motion at the start; None for an object that goes
        nowhere all clip long (less far than the slowest object of the data set in a frame).

        Not a bound on the start's speed: a bounce in the first step leaves little of it.
        """
        if self.velocity is None or self.travel < MIN_SPEED * self.frame_size:
            return None
        return direction_of(*self.velocity)


class BlobViews(NamedTuple):
    """Per frame, the largest blob of one colour: ``(T,)`` arrays and ``(T, 2)`` centroids."""

    present: np.ndarray  # bool: a blob of at least the minimum size
    clean: np.ndarray  # bool: it touches no other colour, so nothing of it is hidden
    area: np.ndarray  # pixels
    fill: np.ndarray  # area over the bounding box's
    drop: np.ndarray  # centroid below the box's middle, in box heights
    centroid: np.ndarray  # (x, y) in pixels; NaN where absent
    edges: np.ndarray  # (T, 4) left, right, top, bottom pixel centres of the bounding box
    free: np.ndarray  # (T, 4) bool: no other colour there, so that edge is the object's own


def palette_labels(frames: np.ndarray) -> np.ndarray:
    """Nearest palette colour of every foreground pixel.

    Args:
        frames: uint8 ``(T, H, W, 3)``.

    Returns:
        int ``(T, H, W)``: an index into :data:`COLOURS`, -1 for background.
    """
    rgb = frames.astype(np.float64)
    nearest = ((rgb[..., None, :] - COLOURS) ** 2).sum(-1).argmin(-1)
    return np.where(rgb.max(-1) > FOREGROUND, nearest, -1)


def detect(frames: np.ndarray) -> list[DetectedObject]:
    """The objects a clip shows, one per palette colour that is there in enough frames.

    Args:
        frames: uint8 ``(T, H, W, 3)``, square frames of 16 px or more (samples may be noisy).

    Returns:
        The objects, in palette order.
    """
    labels = palette_labels(frames)
    frame_size = frames.shape[1]
    objects = []
    for index, colour in enumerate(PALETTE):
        views = colour_views(labels, index, min_blob(frame_size))
        shown = int(views.present.sum())
        if not shown or shown < PRESENT * len(frames):
            continue
        whole = _whole_views(views)
        shape = shape_of(float(np.median(views.fill[whole])), float(np.median(views.drop[whole])))
        # A mean over frames, not a median: a raster's side is a whole number of pixels, and
        # only the mean over the object's sub-pixel positions recovers the fraction between.
        radius = float(np.sqrt(views.area[whole] / UNIT_AREA[shape]).mean()) / frame_size
        velocity = start_velocity(views, frame_size)
        seen = views.centroid[views.present]
        travel = float(np.hypot(*(seen - seen[0]).T).max())
        objects.append(DetectedObject(colour, shape, radius, velocity, travel, shown, frame_size))
    return objects


def colour_views(labels: np.ndarray, index: int, smallest: int) -> BlobViews:
    """The largest 4-connected blob of palette colour ``index`` in every frame.

    Args:
        labels: int ``(T, H, W)`` from :func:`palette_labels`.
        index: the colour, an index into :data:`COLOURS`.
        smallest: the fewest pixels of a blob; below that the colour is absent from a frame.
    """
    steps = len(labels)
    views = BlobViews(
        *(np.zeros(steps, bool) for _ in range(2)),
        *(np.zeros(steps) for _ in range(3)),
        np.full((steps, 2), np.nan),
        np.full((steps, 4), np.nan),
        np.zeros((steps, 4), bool),
    )
    for t, frame in enumerate(labels):
        blobs, count = ndimage.label(frame == index)  # the default structure is 4-connected
        sizes = np.bincount(blobs.ravel())[1:]
        if not count or sizes.max() < smallest:
            continue
        blob = blobs == sizes.argmax() + 1
        ys, xs = np.nonzero(blob)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        ring = ndimage.binary_dilation(blob) & ~blob
        other_y, other_x = np.nonzero(ring & (frame >= 0) & (frame != index))
        views.present[t], views.clean[t] = True, not other_x.size
        views.edges[t] = xs.min(), xs.max(), ys.min(), ys.max()
        views.free[t] = (
            not (other_x <= xs.min()).any(),
            not (other_x >= xs.max()).any(),
            not (other_y <= ys.min()).any(),
            not (other_y >= ys.max()).any(),
        )
        views.area[t], views.fill[t] = xs.size, xs.size / (height * width)
        views.drop[t] = (ys.mean() - (ys.min() + ys.max()) / 2) / height
        views.centroid[t] = xs.mean() + 0.5, ys.mean() + 0.5
    return views


def min_blob(frame_size: int) -> int:
    """The fewest pixels of an object: :data:`MIN_BLOB` at 32², scaled with the frame's area
    (so specks stay specks at 64²), and at least 3."""
    return max(3, round(MIN_BLOB * (frame_size / 32) ** 2))


def shape_of(fill: float, drop: float) -> str:
    """``square``, ``circle`` or ``triangle`` from a blob's fill of its bounding box and how
    far its centroid lies below the box's middle (in box heights)."""
    if fill >= SQUARE_FILL:
        return "square"
    return "triangle" if fill < TRIANGLE_FILL or drop >= BOTTOM_HEAVY else "circle"


def _whole_views(views: BlobViews) -> np.ndarray:
    """The frames to read shape and size from: those where the blob touches no other colour;
    failing that (two objects together all clip long), those within 10% of its largest area,
    the least hidden."""
    if views.clean.any():
        return views.clean
    return views.present & (views.area >= 0.9 * views.area.max())


def start_velocity(views: BlobViews, frame_size: int) -> tuple[float, float] | None:
    """The motion per frame at the start of the clip.

    Args:
        views: the object's blobs (:func:`colour_views`).
        frame_size: the frame side in pixels: a step over twice the fastest motion of the data
            set is no motion but the largest blob jumping to another piece of the colour.

    Returns:
        ``(dx, dy)`` in px per frame, or None without two neighbouring frames showing it.
    """
    if not views.present.any():
        return None
    first = np.flatnonzero(views.present)[0]
    pairs = np.arange(first, min(first + DIRECTION_PAIRS, len(views.present) - 1))
    plausible = 2 * MAX_SPEED * frame_size
    velocity = []
    for axis in range(2):
        own = _own_steps(views, pairs, axis)
        own = own[np.abs(own) <= plausible]  # NaN fails too
        if not own.size:  # hidden in part all along the start: the centroid, biased or not
            own = np.diff(views.centroid[:, axis])[pairs]
            own = own[np.abs(own) <= plausible]
        if not own.size:
            return None
        velocity.append(_run_mean(own))
    return velocity[0], velocity[1]


def _own_steps(views: BlobViews, pairs: np.ndarray, axis: int) -> np.ndarray:
    """The object's own motion along ``axis`` (0: x, 1: y) from frame ``t`` to ``t + 1`` for
    each ``t`` in ``pairs``; NaN where part of it is hidden and no edge shows its motion.

    The centroid's where the blob is whole in both frames. Where another object hides part of
    it, the centroid moves with the hidden part; an edge of the bounding box that touches no
    other colour in both frames is the object's own and moves with it (in whole pixels).
    """
    nxt = pairs + 1
    steps = views.centroid[nxt, axis] - views.centroid[pairs, axis]
    steps[~(views.clean[pairs] & views.clean[nxt])] = np.nan
    edges = slice(2 * axis, 2 * axis + 2)
    free = views.free[pairs, edges] & views.free[nxt, edges]
    edge_steps = np.where(free, views.edges[nxt, edges] - views.edges[pairs, edges], np.nan)
    hidden = np.isnan(steps) & free.any(1)
    steps[hidden] = np.nanmean(edge_steps[hidden], axis=1)  # both edges where both are free
    centroid = views.centroid[nxt, axis] - views.centroid[pairs, axis]
    return np.where(np.isnan(steps), centroid, steps)


def _run_mean(steps: np.ndarray) -> float:
    """The mean of ``steps`` (one component) up to the first one that differs from the first
    by more than :data:`STEP_JITTER`."""
    # The caption's rule is the first step, but a raster's centroid jitters by up to half a
    # pixel, as much as a slow object moves in a frame at 32²; the mean over the first steps
    # damps that. The motion is constant until a bounce, which shortens or reverses the step
    # it falls in and reverses the later ones: the run stops there. A bounce in the first or
    # second step leaves the first step alone, which is the caption's. Over 760 objects of
    # rendered clips, this misses 13 directions at 32² and 2 at 64², the first step alone 23
    # and 9.
    off = np.flatnonzero(np.abs(steps - steps[0]) > STEP_JITTER)
    return float(steps[: off[0] if off.size else len(steps)].mean())
