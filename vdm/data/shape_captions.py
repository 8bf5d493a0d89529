"""Captions of the moving-shapes clips: what each object is and where it goes, in words.

The facts of one object (:class:`ShapeDescription`) come from its track alone
(:func:`describe_tracks`):

- *size*: ``small`` when its radius (half side, circumradius) is below the middle of the
  spec's range, ``(MIN_RADIUS + MAX_RADIUS) / 2 · size``, else ``large``;
- *direction*: ``left``, ``right``, ``up`` or ``down``: the larger component of its motion
  between the first two frames (image y grows downwards). Objects bounce off the walls, so
  this is the direction at the start of the clip, not necessarily at its end.

:func:`caption` puts the facts of a clip into one English sentence, in one of a few phrasings
(:data:`TEMPLATES`) with varied verbs and object order, and :func:`parse_caption` reads them
back from any of those phrasings and from short prompts a user would type ("a red square moves
right", "two green circles moving down").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from vdm.data.shapes import (
    CLASSES,
    MAX_RADIUS,
    MIN_RADIUS,
    PALETTE,
    SPLITS,
    ShapesSpec,
    ShapeTrack,
    clip_rng,
    sample_tracks,
)

SIZES = ("small", "large")
DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class ShapeDescription:
    """What a caption says of one object. A field is None where a parsed text does not state
    it (:func:`parse_caption` of "a blue triangle" has no size or direction); descriptions of
    rendered clips (:func:`describe_tracks`) state every field.

    Args:
        shape: ``circle``, ``square`` or ``triangle``, or None.
        colour: a key of :data:`vdm.data.shapes.PALETTE`, or None.
        size: ``small`` or ``large``, or None.
        direction: ``left``, ``right``, ``up`` or ``down`` (at the start of the clip), or None.
    """

    shape: str | None
    colour: str | None
    size: str | None
    direction: str | None


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

    Returns:
        One description per track, every field set.
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


# The phrasings of a caption; each names every object's size, colour, shape and direction.
TEMPLATES = ("moves", "header", "drifting", "there_is")
# Verbs: third person for "a red circle moves left", -ing forms for "a red circle drifting up".
VERBS = ("moves", "goes", "travels", "heads", "drifts")
VERBS_ING = ("moving", "going", "travelling", "heading", "drifting")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
# The words parse_caption understands, with their synonyms for typed prompts.
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small",
              "large": "large", "big": "large", "huge": "large"}  # fmt: skip
DIRECTION_WORDS = {
    "left": "left", "leftward": "left", "leftwards": "left",
    "right": "right", "rightward": "right", "rightwards": "right",
    "up": "up", "upward": "up", "upwards": "up",
    "down": "down", "downward": "down", "downwards": "down",
}  # fmt: skip
SHAPE_WORDS = {**{name: name for name in CLASSES}, **{f"{name}s": name for name in CLASSES}}
# "two green circles" or "2 green circles" are two objects; "one" is no count (a pronoun).
COUNT_WORDS = {
    **{word: count for count, word in enumerate(NUMBERS) if count > 1},
    **{str(count): count for count in range(2, len(NUMBERS))},
}
# Clauses, one object (or "two X") each: split on "and", commas and semicolons.
CLAUSE = re.compile(r"\band\b|[,;]")
WORD = re.compile(r"[a-z]+|\d+")


def caption_rng(spec: ShapesSpec, split: str, index: int) -> np.random.Generator:
    """The generator of clip ``index``'s caption phrasing: apart from :func:`clip_rng`, so the
    phrasing never changes a clip's frames.

    Args:
        spec: the data set spec (its seed).
        split: ``train`` or ``val``.
        index: the clip's index within the split.

    Returns:
        A fresh generator seeded with ``(seed, split id, index, 1)``.
    """
    return np.random.default_rng([spec.seed, SPLITS.index(split), index, 1])


def clip_caption(spec: ShapesSpec, split: str, index: int) -> str:
    """The caption of clip ``index`` of ``split``: its tracks (:func:`clip_rng`) described,
    phrased by :func:`caption_rng`.

    Args:
        spec: the data set spec.
        split: ``train`` or ``val``.
        index: the clip's index within the split.

    Returns:
        One line of English.
    """
    tracks, _ = sample_tracks(clip_rng(spec, split, index), spec)
    return caption(describe_tracks(tracks, spec.size), caption_rng(spec, split, index))


def _direction_phrase(direction: str, rng: np.random.Generator) -> str:
    """``left`` or ``to the left``, ``up`` or ``upwards``: one of two wordings."""
    if rng.random() < 0.5:
        return direction
    return f"to the {direction}" if direction in ("left", "right") else f"{direction}wards"


def _pick(words: tuple[str, ...], rng: np.random.Generator) -> str:
    return words[int(rng.integers(len(words)))]


def caption(
    descriptions: list[ShapeDescription], rng: np.random.Generator, template: str | None = None
) -> str:
    """One English sentence naming each object's size, colour, shape and direction, e.g. "a
    large red circle moves left and a small blue circle goes up", "two circles: a large red one
    heading left and a small blue one going up", "a small blue circle drifting up, and a large
    red circle moving left", "there is a large red circle that travels to the left and ...".

    Args:
        descriptions: the objects, every field set (:func:`describe_tracks`).
        rng: picks the phrasing (:data:`TEMPLATES`), verbs, wordings and object order.
        template: one of :data:`TEMPLATES` instead of a random one.

    Returns:
        The caption (lower case, no final full stop).

    Raises:
        ValueError: no objects, a description with a field unset, or an unknown template.
    """
    if not descriptions or any(None in vars(d).values() for d in descriptions):
        raise ValueError(f"caption needs objects with every fact set, got {descriptions}")
    if template not in (None, *TEMPLATES):
        raise ValueError(f"unknown caption template {template!r}: use one of {TEMPLATES}")
    # Drawn even when the template is given, so the other choices do not depend on it.
    drawn = _pick(TEMPLATES, rng)
    template = template or drawn
    order = [descriptions[i] for i in rng.permutation(len(descriptions))]

    def noun(d: ShapeDescription) -> str:
        return f"a {d.size} {d.colour} {d.shape}"

    def motion(verbs: tuple[str, ...], d: ShapeDescription) -> str:
        return f"{_pick(verbs, rng)} {_direction_phrase(d.direction, rng)}"

    if template == "moves":
        return " and ".join(f"{noun(d)} {motion(VERBS, d)}" for d in order)
    if template == "header":
        shapes = {d.shape for d in order}
        count = NUMBERS[len(order)] if len(order) < len(NUMBERS) else str(len(order))
        if len(shapes) == 1:  # "two circles: a large red one ... and a small blue one ..."
            shape = shapes.pop()
            head = f"a {shape}" if len(order) == 1 else f"{count} {shape}s"
            parts = [f"a {d.size} {d.colour} one {motion(VERBS_ING, d)}" for d in order]
        else:
            head = f"{count} shapes"
            parts = [f"{noun(d)} {motion(VERBS_ING, d)}" for d in order]
        return f"{head}: {' and '.join(parts)}"
    if template == "drifting":
        return ", and ".join(f"{noun(d)} {motion(VERBS_ING, d)}" for d in order)
    return "there is " + " and ".join(f"{noun(d)} that {motion(VERBS, d)}" for d in order)


def _facts(words: list[str], table: dict[str, str]) -> str | None:
    """The first word of ``words`` that ``table`` knows, as its canonical value."""
    return next((table[w] for w in words if w in table), None)


def parse_caption(text: str) -> list[ShapeDescription]:
    """The objects a caption or prompt describes, by keywords, in the order they are named.

    The text splits into clauses at "and", commas and semicolons; each clause naming a shape,
    colour or size, or the pronoun "one", is one object ("two X" / "2 X": two alike). A clause
    without a shape takes the last shape named before it ("a red square and a blue one"), and
    text before a colon only names that shape ("two circles: a red one ..."). A fact the text
    does not state is None. Words are matched case-insensitively; others are ignored.

    Args:
        text: a caption of :func:`caption` or a short prompt, e.g. "a red square moves right",
            "a blue triangle", "two green circles moving down".

    Returns:
        One description per object; empty when the text names none.
    """
    text = text.lower()
    shape = None
    if ":" in text:
        head, text = text.split(":", 1)
        shape = _facts(WORD.findall(head), SHAPE_WORDS)
    objects = []
    for clause in CLAUSE.split(text):
        words = WORD.findall(clause)
        named = _facts(words, SHAPE_WORDS)
        colour = next((w for w in words if w in PALETTE), None)
        size = _facts(words, SIZE_WORDS)
        if named is None and colour is None and size is None and "one" not in words:
            continue  # no object here ("on black"), or a motion alone
        shape = named or shape
        count = next((COUNT_WORDS[w] for w in words if w in COUNT_WORDS), 1)
        description = ShapeDescription(shape, colour, size, _facts(words, DIRECTION_WORDS))
        objects += [description] * count
    return objects
