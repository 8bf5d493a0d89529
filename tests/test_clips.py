"""Clip index arithmetic: modes, strides, short-video policies, edges."""

import itertools

import numpy as np
import pytest

from vdm.data.clips import ShortVideoError, clip_indices, clip_span


def test_span_counts_the_frames_a_clip_covers():
    assert clip_span(1, 1) == 1
    assert clip_span(16, 1) == 16
    assert clip_span(16, 4) == 61


def test_center_mode_is_centred_and_deterministic():
    assert clip_indices(10, 4, 2, mode="center") == [1, 3, 5, 7]  # span 7 in 10: start 1
    assert clip_indices(16, 16, 1, mode="center") == list(range(16))  # exactly fits
    assert clip_indices(17, 16, 1, mode="center") == list(range(16))  # 1 spare frame: start 0
    assert clip_indices(18, 16, 1, mode="center") == list(range(1, 17))


def test_random_mode_covers_every_valid_start_uniformly():
    rng = np.random.default_rng(0)
    starts = [clip_indices(20, 4, 3, rng=rng)[0] for _ in range(6000)]
    # span 10 in 20 frames: starts 0..10, each ~1/11 of the draws
    assert set(starts) == set(range(11))
    counts = np.bincount(starts, minlength=11)
    assert counts.min() > 6000 / 11 * 0.8
    for _ in range(100):
        idx = clip_indices(20, 4, 3, rng=rng)
        assert np.all(np.diff(idx) == 3) and idx[-1] < 20


def test_random_mode_is_reproducible_from_the_generator():
    a = [clip_indices(100, 8, 2, rng=np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_short_video_policies():
    with pytest.raises(ShortVideoError, match="3 frames < 8"):
        clip_indices(3, 8, 1)
    assert clip_indices(3, 8, 1, mode="center", short_video="loop") == [0, 1, 2, 0, 1, 2, 0, 1]
    assert clip_indices(3, 5, 1, mode="center", short_video="repeat_last") == [0, 1, 2, 2, 2]
    assert clip_indices(5, 4, 2, mode="center", short_video="repeat_last") == [0, 2, 4, 4]
    looped = clip_indices(3, 8, 2, rng=np.random.default_rng(1), short_video="loop")
    assert len(looped) == 8 and all(0 <= i < 3 for i in looped)
    assert all((b - a) % 3 == 2 for a, b in itertools.pairwise(looped))
    # a policy only matters for short videos
    assert clip_indices(8, 8, 1, mode="center", short_video="loop") == list(range(8))


def test_single_frame_edges():
    assert clip_indices(1, 1, 1) == [0]
    assert clip_indices(1, 3, 5, short_video="repeat_last") == [0, 0, 0]
    assert clip_indices(1, 3, 5, short_video="loop") == [0, 0, 0]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=">= 1"):
        clip_indices(0, 4)
    with pytest.raises(ValueError, match=">= 1"):
        clip_indices(10, 4, 0)
    with pytest.raises(ValueError, match="mode"):
        clip_indices(10, 4, mode="middle")
    with pytest.raises(ValueError, match="data.short_video"):
        clip_indices(10, 4, short_video="pad")
