"""Caption adherence: objects read back from hand-drawn and rendered clips with known tracks, and
each column of the score moved by exactly the fact it scores."""

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vdm.data import shape_captions
from vdm.data.shape_captions import ShapeDescription
from vdm.data.shapes import ShapesSpec, ShapeTrack, draw
from vdm.evaluation.adherence import COLUMNS, adherence, agrees, score_clips
from vdm.evaluation.shape_detection import DetectedObject, detect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import caption_adherence
from caption_adherence import real_clips

VELOCITIES = {"right": (1.5, 0.4), "left": (-1.5, -0.4), "down": (0.4, 1.5), "up": (-0.4, -1.5)}


def moving(shape, colour, radius, start, velocity, frames=8):
    """A track at constant velocity (px per frame), far enough from the walls not to bounce."""
    steps = np.arange(frames)[:, None]
    return ShapeTrack(shape, colour, radius, np.array(start) + steps * np.array(velocity))


def clip_of(tracks, size=32, frames=8):
    return draw(tracks, ShapesSpec(size=size, num_frames=frames))


@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize(("radius", "words"), [(0.13, "small"), (0.19, "large")])
def test_a_drawn_object_is_read_back_with_its_shape_size_and_direction(size, shape, radius, words):
    scale = size / 32  # speeds and positions as at 32², scaled
    for direction, (vx, vy) in VELOCITIES.items():
        start = (16 - 5 * vx, 16 - 5 * vy)
        track = moving(
            shape, "cyan", radius * size, np.multiply(start, scale), (vx * scale, vy * scale)
        )
        [found] = detect(clip_of([track], size))
        assert (found.colour, found.shape, found.size) == ("cyan", shape, words)
        assert found.direction == direction and found.frames == 8
        assert found.radius * size == pytest.approx(radius * size, abs=0.3)


def test_a_square_drawn_by_hand_is_a_square_of_its_side():
    """Side 12 px at 32²: half side 6 px, above the middle radius (5.2 px): large."""
    clip = np.zeros((4, 32, 32, 3), np.uint8)
    for t in range(4):
        clip[t, 10:22, 4 + 2 * t : 16 + 2 * t] = (255, 0, 255)
    [found] = detect(clip)
    assert (found.colour, found.shape, found.size, found.direction) == (
        "magenta",
        "square",
        "large",
        "right",
    )
    assert found.radius * 32 == pytest.approx(6.0) and found.velocity == pytest.approx((2.0, 0.0))


def test_specks_and_a_colour_in_under_half_the_frames_are_no_objects():
    clip = clip_of([moving("square", "red", 5, (10, 10), (1, 0))])
    clip[:, 28, 28] = (0, 255, 0)  # a 1-px green speck in every frame
    clip[:3, 25:31, 2:8] = (0, 0, 255)  # a blue block in 3 of the 8 frames
    assert [found.colour for found in detect(clip)] == ["red"]
    clip[3, 25:31, 2:8] = (0, 0, 255)  # in 4 of the 8: half the clip, an object
    assert [found.colour for found in detect(clip)] == ["red", "blue"]


def test_an_object_going_behind_another_keeps_its_shape_size_and_direction():
    """A large square (half side 5.6 px, above the middle 5.2) slides behind a larger circle
    drawn later: whole in the first frame only, then ever more hidden. Read from all its
    frames it would be neither square nor large."""
    square = moving("square", "yellow", 5.6, (5, 16), (1.0, 0.3), frames=12)
    circle = ShapeTrack("circle", "blue", 6.4, np.tile([18.0, 16.0], (12, 1)))
    by_colour = {found.colour: found for found in detect(clip_of([square, circle], frames=12))}
    assert by_colour["yellow"].shape == "square" and by_colour["yellow"].size == "large"
    assert by_colour["yellow"].direction == "right"
    assert by_colour["blue"].shape == "circle" and by_colour["blue"].size == "large"
    assert by_colour["blue"].direction is None  # it goes nowhere


def test_each_wrong_fact_costs_exactly_its_own_column():
    clip = clip_of([moving("square", "green", 4.5, (10, 12), (1.5, 0.4))])
    right = ShapeDescription("square", "green", "small", "right")
    ones = dict.fromkeys(COLUMNS, 1.0)
    assert adherence(clip, [right]) == ones
    for fact, wrong in [("shape", "circle"), ("size", "large"), ("direction", "left")]:
        assert adherence(clip, [replace(right, **{fact: wrong})]) == {**ones, fact: 0.0, "all": 0.0}
    lost = adherence(clip, [replace(right, colour="red")])
    assert lost["colour"] == lost["all"] == 0.0 and lost["count"] == 1.0
    assert all(math.isnan(lost[fact]) for fact in ("shape", "size", "direction"))  # none found
    assert adherence(clip, [right, ShapeDescription("square", "red", "small", "up")])["count"] == 0


def test_facts_a_caption_does_not_state_are_not_scored():
    clip = clip_of([moving("circle", "red", 6, (12, 16), (0.3, 1.4))])
    colour_only = ShapeDescription(None, "red", None, None)
    s = adherence(clip, [colour_only])
    assert s["colour"] == s["all"] == s["count"] == 1.0
    assert all(math.isnan(s[fact]) for fact in ("shape", "size", "direction"))
    # no colour stated: matched by its other facts, and the colour column has nothing to score
    s = adherence(clip, [ShapeDescription("circle", None, "large", "down")])
    assert math.isnan(s["colour"]) and s["shape"] == s["direction"] == s["all"] == 1.0


def test_empty_frames_find_nothing_and_score_zero():
    s = adherence(
        np.zeros((8, 32, 32, 3), np.uint8), [ShapeDescription("square", "red", "small", "up")]
    )
    assert s["colour"] == s["count"] == s["all"] == 0.0 and math.isnan(s["shape"])
    assert adherence(np.zeros((1, 16, 16, 3), np.uint8), [])["count"] == 1.0  # nothing, as said


def test_near_the_captions_boundaries_either_word_agrees():
    """At 32² the middle radius is 5.2 px; a motion 40° below the x axis is 5° from the
    diagonal, one 20° below it 25° away."""

    def found(radius_px, angle):
        velocity = (math.cos(math.radians(angle)), math.sin(math.radians(angle)))
        return DetectedObject("red", "circle", radius_px / 32, velocity, 10.0, 8, 32)

    assert agrees(found(5.3, 0), "size", "small") and agrees(found(5.3, 0), "size", "large")
    assert not agrees(found(5.6, 0), "size", "small")
    assert agrees(found(5, 40), "direction", "right") and agrees(found(5, 40), "direction", "down")
    assert agrees(found(5, 20), "direction", "right")
    assert not agrees(found(5, 20), "direction", "down")
    assert not agrees(found(5, 20), "direction", "up")


@pytest.mark.parametrize("size", [32, 64])
def test_real_clips_show_their_own_captions_and_not_other_clips(size):
    clips, facts = real_clips(48, size, frames=16)
    own = score_clips(clips, facts)
    assert all(own[column] >= 0.95 for column in COLUMNS), own
    other = score_clips(clips, facts[1:] + facts[:1])  # every clip with its neighbour's caption
    assert other["colour"] <= 0.6 and other["all"] <= 0.2, other


def test_noisy_real_clips_still_show_their_captions():
    clips, facts = real_clips(48, 32, frames=16)
    rng = np.random.default_rng(0)
    noisy = [np.clip(c + rng.normal(0, 20, c.shape), 0, 255).astype(np.uint8) for c in clips]
    scores = score_clips(noisy, facts)
    assert all(scores[column] >= 0.95 for column in COLUMNS), scores


def test_score_clips_averages_each_column_over_the_clips_that_score_it():
    clip = clip_of([moving("square", "green", 4.5, (10, 12), (1.5, 0.4))])
    right = ShapeDescription("square", "green", "small", "right")
    s = score_clips([clip, clip], [[right], [ShapeDescription(None, "green", None, None)]])
    assert s == dict.fromkeys(COLUMNS, 1.0)
    assert math.isnan(score_clips([clip], [[]])["all"])


def test_the_bench_shuffle_moves_every_caption():
    for count in (2, 3, 48):
        order = caption_adherence.derangement(count)
        assert sorted(order) == list(range(count)) and (order != np.arange(count)).all()


def test_the_bench_scores_a_sample_folder_through_parse_caption(tmp_path, monkeypatch, capsys):
    clips, facts = real_clips(4, 32, frames=8)
    prompts = [f"clip {i}" for i in range(4)]
    np.savez(tmp_path / "samples.npz", videos=np.stack(clips), prompts=np.array(prompts))
    parsed = dict(zip(prompts, facts, strict=True))
    monkeypatch.setattr(shape_captions, "parse_caption", parsed.__getitem__, raising=False)
    monkeypatch.setattr(sys, "argv", ["caption_adherence", str(tmp_path), "--clips", "4"])
    caption_adherence.main()
    table = capsys.readouterr().out
    assert f"| {tmp_path} | 4 | 1.00 |" in table and "| real clips, own captions | 4 |" in table
    monkeypatch.delattr(shape_captions, "parse_caption")
    caption_adherence.main()
    assert "no parse_caption yet" in capsys.readouterr().out
