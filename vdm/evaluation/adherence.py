"""Does a moving-shapes clip show what its caption says? Caption adherence, fact by fact.

The objects a clip shows (:func:`vdm.evaluation.shape_detection.detect`) are matched to the
objects its caption describes (:class:`vdm.data.shape_captions.ShapeDescription`) by colour,
and each stated fact is checked. :func:`adherence` scores one clip, :func:`score_clips` a set::

    scores = score_clips(clips, [describe_tracks(tracks, 32) for tracks in clip_tracks])
    scores["all"]  # the share of described objects shown with every stated fact right

Two facts are read with a tolerance at the caption's own boundaries, where no raster can tell:
a size within :data:`SIZE_TOLERANCE` px of the middle radius, and a motion within
:data:`DIRECTION_TOLERANCE` degrees of a diagonal, agree with either word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vdm.data.shape_captions import ShapeDescription
from vdm.evaluation.shape_detection import MIDDLE_RADIUS, DetectedObject, detect

COLUMNS = ("colour", "shape", "size", "direction", "count", "all")
FACTS = ("shape", "size", "direction")  # those scored among the found objects
# Pixels of radius either side of the small/large boundary that agree with either size: a
# raster's rows and columns are whole pixels, so the area of an object whose sub-pixel position
# hardly changes over the clip is off by up to about this much.
SIZE_TOLERANCE = 0.25
# Degrees past a diagonal that a motion still counts as the stated direction: the caption's
# rule splits at the exact diagonal, where the raster's half-pixel jitter decides.
DIRECTION_TOLERANCE = 10.0
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def adherence(frames: np.ndarray, descriptions: Sequence[ShapeDescription]) -> dict[str, float]:
    """How much of what a caption states a clip shows.

    Args:
        frames: uint8 ``(T, H, W, 3)``, square frames of 16 px or more.
        descriptions: the caption's objects; a None field is a fact the caption does not state
            and is not scored.

    Returns:
        The :data:`COLUMNS`: ``colour``, the share of the stated colours found; ``shape``,
        ``size``, ``direction``, the share right among the found objects whose description
        states it; ``count``, 1 when as many objects are found as described, else 0; ``all``,
        the share of described objects found with every stated fact right. NaN where nothing
        is scored.
    """
    objects = detect(frames)
    pairs = list(zip(descriptions, match(descriptions, objects), strict=True))
    scores = {"colour": _share([found is not None for d, found in pairs if d.colour is not None])}
    for fact in FACTS:
        scores[fact] = _share(
            [
                agrees(found, fact, getattr(d, fact))
                for d, found in pairs
                if found is not None and getattr(d, fact) is not None
            ]
        )
    scores["count"] = float(len(objects) == len(descriptions))
    scores["all"] = _share([found is not None and _all_right(found, d) for d, found in pairs])
    return scores


def score_clips(
    clips: Sequence[np.ndarray], descriptions: Sequence[Sequence[ShapeDescription]]
) -> dict[str, float]:
    """:func:`adherence` averaged over clips, each column over the clips that score it.

    Args:
        clips: uint8 ``(T, H, W, 3)`` each.
        descriptions: the caption's objects, per clip.

    Returns:
        The mean of each of the :data:`COLUMNS`, NaN where no clip scores it.
    """
    rows = [adherence(clip, d) for clip, d in zip(clips, descriptions, strict=True)]
    return {column: _mean([row[column] for row in rows]) for column in COLUMNS}


def match(
    descriptions: Sequence[ShapeDescription], objects: Sequence[DetectedObject]
) -> list[DetectedObject | None]:
    """The found object each description is about, None where none is.

    The one of its colour; for a description that states no colour, the object of a colour no
    description states that agrees with most of its stated facts.
    """
    by_colour = {found.colour: found for found in objects}
    matched = [by_colour.get(d.colour) if d.colour is not None else None for d in descriptions]
    stated = {d.colour for d in descriptions}
    free = [found for found in objects if found.colour not in stated]
    for i, description in enumerate(descriptions):
        if description.colour is None and free:
            matched[i] = max(free, key=lambda found: _right_facts(found, description))
            free.remove(matched[i])
    return matched


def agrees(found: DetectedObject, fact: str, stated: str) -> bool:
    """Whether ``found`` shows the stated ``shape``, ``size`` or ``direction``."""
    if fact == "direction":
        return found.direction is not None and direction_agrees(found.velocity, stated)
    if fact == "size" and abs(found.radius - MIDDLE_RADIUS) * found.frame_size <= SIZE_TOLERANCE:
        return stated in ("small", "large")
    return getattr(found, fact) == stated


def direction_agrees(velocity: tuple[float, float] | None, direction: str) -> bool:
    """Whether a motion goes the stated way: within 45° + :data:`DIRECTION_TOLERANCE` of it.

    Args:
        velocity: ``(dx, dy)`` in image coordinates (y down); None or zero never agrees.
        direction: ``left``, ``right``, ``up`` or ``down``.
    """
    if velocity is None or not math.hypot(*velocity):
        return False
    ux, uy = DIRECTIONS[direction]
    cosine = (velocity[0] * ux + velocity[1] * uy) / math.hypot(*velocity)
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine)))) <= 45 + DIRECTION_TOLERANCE


def _right_facts(found: DetectedObject, description: ShapeDescription) -> int:
    """How many of the facts ``description`` states (bar colour) ``found`` shows."""
    stated = [(fact, getattr(description, fact)) for fact in FACTS]
    return sum(agrees(found, fact, value) for fact, value in stated if value is not None)


def _all_right(found: DetectedObject, description: ShapeDescription) -> bool:
    """Whether ``found`` shows every fact ``description`` states (bar colour)."""
    stated = sum(getattr(description, fact) is not None for fact in FACTS)
    return _right_facts(found, description) == stated


def _share(hits: list[bool]) -> float:
    """The share of True in ``hits``; NaN when empty (nothing to score)."""
    return float(np.mean(hits)) if hits else float("nan")


def _mean(values: list[float]) -> float:
    """The mean of the values that are not NaN; NaN if none."""
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
