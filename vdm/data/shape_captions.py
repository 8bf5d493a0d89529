"""Captions of the moving-shapes clips: what each object is and where it goes, in words.

The facts of one object (:class:`ShapeDescription`) come from its track alone
(:func:`describe_tracks`):

- *size*: ``small`` when its radius (half side, circumradius) is below the middle of the
  spec's range, ``(MIN_RADIUS + MAX_RADIUS) / 2 · size``, else ``large``;
- *direction*: ``left``, ``right``, ``up`` or ``down``: the larger component of its motion
  between the first two frames (image y grows downwards). Objects bounce off the walls, so
  this is the direction at the start of the clip, not necessarily at its end.
"""

from __future__ import annotations

from dataclasses import dataclass

from vdm.data.shapes import MAX_RADIUS, MIN_RADIUS, ShapeTrack

SIZES = ("small", "large")
DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class ShapeDescription:
    """What a caption says of one object.

    Args:
        shape: ``circle``, ``square`` or ``triangle``.
        colour: a key of :data:`vdm.data.shapes.PALETTE`.
        size: ``small`` or ``large``.
        direction: ``left``, ``right``, ``up`` or ``down`` (at the start of the clip).
    """

    shape: str
    colour: str
    size: str
    direction: str


def direction_of(dx: float, dy: float) -> str:
    """``left``/``right``/``up``/``down`` of a motion ``(dx, dy)`` in image coordinates (y
    down): its larger component wins, x on a tie."""
    if abs(dx) >= abs(dy):
        return "right" if dx >= 0 else "left"
    return "down" if dy > 0 else "up"


def size_of(radius: float, frame_size: int) -> str:
    """``small`` below the middle of the radius range at ``frame_size``, else ``large``."""
    return "small" if radius < (MIN_RADIUS + MAX_RADIUS) / 2 * frame_size else "large"


def describe_tracks(tracks: list[ShapeTrack], frame_size: int) -> list[ShapeDescription]:
    """The facts of each object of a clip, in drawing order.

    Args:
        tracks: the clip's objects (:func:`vdm.data.shapes.sample_tracks`).
        frame_size: the frame side in pixels (the spec's ``size``).
    """
    descriptions = []
    for track in tracks:
        if len(track.centres) > 1:
            dx, dy = track.centres[1] - track.centres[0]
        else:  # a one-frame clip shows no motion: call it by its (arbitrary) x direction
            dx, dy = 0.0, 0.0
        descriptions.append(
            ShapeDescription(
                track.shape, track.colour, size_of(track.radius, frame_size), direction_of(dx, dy)
            )
        )
    return descriptions
