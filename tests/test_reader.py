"""The decord wrapper: exact frames, metadata, and one error type for every failure."""

import pytest
from conftest import frame_index_video

from vdm.data.reader import VideoReader, VideoReadError, probe


def test_decoded_frames_are_exactly_the_requested_ones(indexed_video):
    reader = VideoReader(indexed_video)
    assert len(reader) == 40 and reader.fps == pytest.approx(10.0)
    expected = frame_index_video(40)
    for indices in ([0, 1, 2], [39], [5, 2, 2, 39, 0], [17, 17, 17], list(range(39, -1, -3))):
        frames = reader.get_batch(indices)
        assert frames.shape == (len(indices), 24, 32, 3) and frames.dtype.name == "uint8"
        assert (frames == expected[indices]).all(), indices


def test_resize_while_decoding(indexed_video):
    # exactly half the native size: decord 0.6's scaler fails there, the reader falls back
    reader = VideoReader(indexed_video, width=16, height=12)
    frames = reader.get_batch([3, 30])
    assert frames.shape == (2, 12, 16, 3)
    assert (frames == frame_index_video(40, 12, 16)[[3, 30]]).all()  # constant frames survive


def test_probe_reports_checked_metadata(indexed_video):
    info = probe(indexed_video)
    assert (info.num_frames, info.height, info.width) == (40, 24, 32)
    assert info.fps == pytest.approx(10.0)


def test_out_of_range_frames_are_a_read_error(indexed_video):
    with pytest.raises(VideoReadError, match=r"out of range \[0, 40\)"):
        VideoReader(indexed_video).get_batch([38, 39, 40])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero_bytes.mp4", "RuntimeError"),  # decord: RuntimeError
        ("text_renamed.mp4", "RuntimeError"),
        ("truncated_30pct_moov_at_end.mp4", "RuntimeError"),
        ("truncated_30pct_moov_at_front.mp4", "DECORDError"),  # not a RuntimeError
    ],
)
def test_every_broken_file_is_one_error_type_naming_the_file(shared_videos, name, reason):
    path = shared_videos / "bad" / name
    with pytest.raises(VideoReadError) as caught:
        probe(path)
    assert caught.value.path == str(path) and reason in caught.value.reason
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_is_a_read_error(tmp_path):
    with pytest.raises(VideoReadError, match="no such file"):
        VideoReader(tmp_path / "nope.mp4")


def test_short_file_opens_and_reads_within_its_frames(shared_videos):
    reader = VideoReader(shared_videos / "bad" / "three_frames.mp4")
    assert len(reader) == 3
    assert reader.get_batch([0, 2, 2, 1]).shape == (4, 240, 320, 3)
    with pytest.raises(VideoReadError):
        reader.get_batch(list(range(8)))


@pytest.mark.parametrize("side", [16, 24, 48])
def test_sizes_decord_cannot_copy_fall_back_and_stay_exact(tmp_path, side):
    """decord 0.6 fails on some frame sizes ("The size must exactly match")."""
    from vdm.files.video import write_mp4

    path = write_mp4(tmp_path / "v.mp4", frame_index_video(12, side, side), fps=8, lossless=True)
    reader = VideoReader(path)
    assert (
        reader.get_batch([4, 0, 0, 11]) == frame_index_video(12, side, side)[[4, 0, 0, 11]]
    ).all()
    assert probe(path).num_frames == 12
    assert VideoReader(path, width=side // 2, height=side // 2).get_batch([3]).shape == (
        1,
        side // 2,
        side // 2,
        3,
    )
