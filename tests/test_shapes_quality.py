"""bench/shapes_quality.py: the coherence scores on hand-built clips with known answers."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from shapes_quality import (
    palette_labels,
    read_samples,
    real_clips,
    sample_folders,
    score,
    shuffled,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def square_clip(colours, xs, y=10, side=6, size=32):
    """One square per frame, of colour ``colours[f]`` with left edge ``xs[f]``."""
    clip = np.zeros((len(xs), size, size, 3), np.uint8)
    for f, (colour, x) in enumerate(zip(colours, xs, strict=True)):
        clip[f, y : y + side, x : x + side] = colour
    return clip


def test_a_square_moving_two_pixels_a_frame_scores_one_everywhere():
    s = score([square_clip([RED] * 8, range(0, 16, 2))])
    assert s == {"clips": 1, "purity": 1.0, "one-colour": 1.0, "frame match": 1.0,
                 "colour stability": 1.0, "colours": 1.0, "empty frames": 0.0}  # fmt: skip


def test_colours_counts_the_palette_colours_a_set_uses_by_their_shares():
    palette = [RED, GREEN, BLUE, (255, 255, 0), (255, 0, 255), (0, 255, 255)]
    six = [square_clip([colour] * 2, [0, 2]) for colour in palette]
    assert score(six)["colours"] == pytest.approx(6.0)
    assert score([square_clip([RED] * 2, [0, 2]), square_clip([BLUE] * 2, [0, 2])])[
        "colours"
    ] == pytest.approx(2.0)
    # Three quarters red, a quarter blue: exp of the entropy, 1.75, between 1 and 2.
    three_red = [square_clip([RED] * 2, [0, 2])] * 3 + [square_clip([BLUE] * 2, [0, 2])]
    assert score(three_red)["colours"] == pytest.approx(
        np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    )
    assert np.isnan(score([np.zeros((2, 32, 32, 3), np.uint8)])["colours"])


def test_a_vanishing_object_leaves_empty_frames_that_frame_match_skips():
    clip = square_clip([RED] * 4, [0, 2, 4, 6])
    clip[2:] = 0  # gone after two frames
    s = score([clip])
    assert s["empty frames"] == 0.5 and s["frame match"] == 1.0
    clip[3, 20, 20] = RED  # a 1-px speck is not an object
    assert score([clip])["empty frames"] == 0.5


def test_a_colour_change_costs_exactly_one_pair():
    """Red for 4 frames, then blue: of 7 neighbouring pairs one has no match and a total
    variation distance of 1."""
    s = score([square_clip([RED] * 4 + [BLUE] * 4, range(0, 16, 2))])
    assert s["frame match"] == pytest.approx(6 / 7)
    assert s["colour stability"] == pytest.approx(6 / 7)
    assert s["purity"] == 1.0


@pytest.mark.parametrize(("jump", "share"), [(2, 1.0), (4, 5 / 6), (8, 1 / 6), (10, 0.0)])
def test_pixels_further_than_3_px_from_their_colour_in_the_previous_frame_miss(jump, share):
    """A 6-px square covers columns 0..5; moved by ``jump`` it covers jump..jump+5, and the
    columns up to 5 + 3 = 8 are within reach."""
    assert score([square_clip([RED] * 2, [0, jump])])["frame match"] == pytest.approx(share)


def test_a_two_coloured_object_has_the_share_of_its_majority_colour():
    clip = square_clip([RED], [4], side=8)
    clip[0, 10:18, 10:12] = GREEN  # 16 of the 64 pixels
    s = score([clip])
    assert s["purity"] == pytest.approx(48 / 64) and s["one-colour"] == 0.0


def test_dim_noise_is_background_and_specks_are_not_objects():
    clip = square_clip([GREEN] * 2, [0, 2])
    clip[:, 30, 30] = BLUE  # a 1-px speck: below MIN_BLOB, but its colour still counts
    clip[:, 0:5, 20:30] = 100  # grey haze below the foreground threshold
    s = score([clip])
    assert s["purity"] == 1.0 and s["frame match"] == 1.0


def test_real_clips_are_coherent_and_shuffled_frames_are_not():
    real = real_clips(24, size=32, frames=8)
    assert all(c.shape == (8, 32, 32, 3) for c in real)
    s, mixed = score(real), score(shuffled(real))
    # not exactly 1: an object that comes out from behind another is new to its frame
    assert s["frame match"] > 0.99 and s["colour stability"] > 0.95 and s["empty frames"] == 0
    assert mixed["frame match"] < 0.3 and mixed["colour stability"] < 0.5


def test_upscaled_sample_files_are_read_back_at_the_model_resolution(tmp_path):
    """The callback's files are lossy (yuv420p) 4× upscales; the block centres keep every
    pixel's palette colour, so the scores equal those of the frames that were written."""
    from vdm.files.video import write_clips

    clips = real_clips(4, size=32, frames=8)
    write_clips(tmp_path, np.stack(clips), fps=8, upscale=4)
    back = read_samples(tmp_path, size=32)
    assert len(back) == 4 and back[0].shape == (8, 32, 32, 3)
    assert np.array_equal(palette_labels(np.stack(back)), palette_labels(np.stack(clips)))
    assert score(back) == score(clips)


def test_sample_folders_are_found_from_a_run_and_a_path_without_clips_is_an_error(tmp_path):
    from vdm.files.video import write_clips

    run = tmp_path / "run"
    for step in ("step_000800", "step_001600"):
        write_clips(run / "samples" / step, np.stack(real_clips(1, 32, 8)), fps=8, upscale=4)
    expected = [run / "samples" / "step_000800", run / "samples" / "step_001600"]
    assert sample_folders([str(run)]) == expected
    assert sample_folders([str(run / "samples")]) == expected
    assert sample_folders([str(expected[1])]) == expected[1:]
    with pytest.raises(SystemExit, match="no sample clips under"):
        sample_folders([str(run), str(tmp_path / "missing")])
    # a path is an error on its own, even when an earlier path found clips inside it
    with pytest.raises(SystemExit, match=f"no sample clips under {tmp_path}:"):
        sample_folders([str(expected[0]), str(tmp_path)])


@pytest.mark.parametrize(("size", "share"), [(32, 4 / 6), (64, 1.0)])
def test_the_frame_match_radius_grows_with_the_frame_size(size, share):
    """At 64² objects move twice as far per frame: a 5-px jump of a 6-px square misses columns
    9..10 of reach 3 at 32², and is matched whole with reach 6 at 64²."""
    clip = square_clip([RED] * 2, [0, 5], size=size)
    assert score([clip], size)["frame match"] == pytest.approx(share)
