"""Video writers against an independent read back with PyAV, and the grid and uint8 helpers."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vdm.files.video import make_grid, to_uint8, write_gif, write_mp4, write_npz

PURE_COLOURS = np.array(
    [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)],
    dtype=np.uint8,
)


def decode(path: Path) -> tuple[np.ndarray, av.video.stream.VideoStream, list[int]]:
    """All frames as uint8 (T, H, W, 3), the stream's rate, and the frames' pts."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        rate = stream.average_rate
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), rate, [f.pts for f in frames]


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth(num_frames: int, height: int, width: int) -> np.ndarray:
    """A moving colour gradient: what lossy codecs are made for."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    blue = 128 + 60 * np.sin((x + y) / 12 + t / 3)
    rgb = np.stack([x * 255 / width, y * 255 / height, blue], axis=-1)
    return rgb.astype(np.uint8)


def test_lossless_mp4_round_trips_exactly(tmp_path):
    frames = noise((12, 32, 32, 3))
    path = write_mp4(tmp_path / "a" / "b" / "clip.mp4", frames, fps=8, lossless=True)
    assert path == tmp_path / "a" / "b" / "clip.mp4"
    decoded, rate, pts = decode(path)
    assert decoded.shape == frames.shape
    np.testing.assert_array_equal(decoded, frames)
    assert rate == 8
    # Constant frame rate: evenly spaced timestamps.
    assert len(set(np.diff(pts))) == 1


@pytest.mark.parametrize("size", [(32, 32), (17, 23)])
def test_lossless_mp4_keeps_any_size(tmp_path, size):
    frames = noise((3, *size, 3), seed=1)
    decoded, _, _ = decode(write_mp4(tmp_path / "clip.mp4", frames, fps=8, lossless=True))
    np.testing.assert_array_equal(decoded, frames)


def test_lossy_mp4_is_close_and_pads_odd_sizes_to_even(tmp_path):
    frames = smooth(20, 31, 45)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=8)
    decoded, rate, _ = decode(path)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert decoded.shape == (20, 32, 46, 3)
    assert rate == 8
    error = np.abs(decoded[:, :31, :45].astype(int) - frames.astype(int))
    # Loose bounds: 4:2:0 halves the colour resolution and PyAV's rgb24 conversion replicates
    # chroma samples; the last row/column share chroma with the black padding.
    assert error[:, :30, :44].mean() < 5
    assert error.mean() < 8
    # The padding is black: its luma, since it shares chroma with the last real row/column.
    with av.open(str(path)) as container:
        luma = np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])
    assert luma[:, 31].mean() < 4 and luma[:, :, 45].mean() < 4


def test_mp4_keeps_a_fractional_frame_rate(tmp_path):
    _, rate, pts = decode(write_mp4(tmp_path / "clip.mp4", smooth(10, 16, 16), fps=29.97))
    assert rate == Fraction(2997, 100)
    assert len(pts) == 10
    assert len(set(np.diff(pts))) == 1


def test_gif_has_every_frame_and_exact_palette_colours(tmp_path):
    frames = np.zeros((6, 16, 20, 3), dtype=np.uint8)
    for t in range(6):
        frames[t, :8, :10] = PURE_COLOURS[1 + t % 5]
        frames[t, 8:, 10:] = PURE_COLOURS[1 + (t + 2) % 5]
    path = write_gif(tmp_path / "clip.gif", frames, fps=8)
    decoded, rate, _ = decode(path)
    assert decoded.shape == frames.shape
    np.testing.assert_array_equal(decoded, frames)
    assert rate == pytest.approx(8, rel=0.1)  # GIF delays are whole hundredths of a second
    assert b"NETSCAPE2.0" in path.read_bytes()  # the loop extension


def test_gif_quantises_rich_colour_and_can_play_once(tmp_path):
    frames = smooth(4, 24, 24)
    path = write_gif(tmp_path / "clip.gif", frames, fps=5, loop=False)
    decoded, _, _ = decode(path)
    assert decoded.shape == frames.shape
    # The 216-colour cube is at most 25.5 off per channel.
    assert np.abs(decoded.astype(int) - frames.astype(int)).max() <= 26
    assert b"NETSCAPE2.0" not in path.read_bytes()


def test_grid_places_tiles_row_major_with_black_padding():
    num, frames, height, width = 5, 2, 3, 4
    videos = np.zeros((num, frames, height, width, 3), dtype=np.uint8)
    for i in range(num):
        videos[i] = 10 * (i + 1)
    videos[:, 1] += 1  # frames stay distinct
    grid = make_grid(videos, nrow=3, padding=2)
    assert grid.shape == (frames, 2 * height + 2, 3 * width + 2 * 2, 3)
    expected = np.zeros_like(grid)
    for i in range(num):
        row, col = divmod(i, 3)
        top, left = row * (height + 2), col * (width + 2)
        np.testing.assert_array_equal(grid[:, top : top + height, left : left + width], videos[i])
        expected[:, top : top + height, left : left + width] = videos[i]
    # Everything else (padding and the missing sixth tile) is black.
    np.testing.assert_array_equal(grid, expected)
    assert (grid[:, height + 2 :, 2 * (width + 2) :] == 0).all()


def test_grid_defaults_to_a_square_layout():
    videos = np.full((4, 1, 2, 2, 3), 200, dtype=np.uint8)
    grid = make_grid(videos)
    assert grid.shape == (1, 5, 5, 3)
    assert (grid[0, 2] == 0).all() and (grid[0, :, 2] == 0).all()
    assert make_grid(videos, padding=0).shape == (1, 4, 4, 3)
    assert make_grid(np.ones((3, 1, 2, 2, 3), np.uint8)).shape == (1, 5, 5, 3)


def test_npz_round_trips(tmp_path):
    videos = noise((2, 3, 8, 8, 3))
    path = write_npz(tmp_path / "samples" / "videos.npz", videos)
    with np.load(path) as data:
        assert list(data) == ["videos"]
        np.testing.assert_array_equal(data["videos"], videos)


def test_npz_keeps_the_name_as_given(tmp_path):
    path = write_npz(tmp_path / "videos.bin", noise((1, 1, 2, 2, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos.bin"]
    with np.load(path) as data:
        assert data["videos"].shape == (1, 1, 2, 2, 3)


def test_to_uint8_maps_the_range_and_clamps():
    values = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    video = values.reshape(1, 1, 6, 1, 1).expand(2, 3, 6, 4, 5)
    out = to_uint8(video)
    assert out.dtype == np.uint8 and out.shape == (2, 6, 4, 5, 3)
    assert out[0, :, 0, 0, 0].tolist() == [0, 0, 128, 191, 255, 255]


def test_to_uint8_puts_channels_last_and_accepts_one_video():
    video = torch.zeros(3, 2, 4, 5)
    video[0] = 1.0  # red
    video[2] = -1.0
    out = to_uint8(video)
    assert out.shape == (2, 4, 5, 3)
    assert out[0, 0, 0].tolist() == [255, 128, 0]
    with pytest.raises(ValueError, match="to_uint8"):
        to_uint8(torch.zeros(3, 4, 5))


def test_writers_reject_float_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "clip.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_gif(tmp_path / "clip.gif", np.zeros((2, 8, 8, 3), np.uint8), fps=0)
    assert list(tmp_path.iterdir()) == []


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    frames = noise((4, 16, 16, 3))
    write_mp4(tmp_path / "a.mp4", frames, fps=8, lossless=True)
    write_mp4(tmp_path / "b.mp4", frames, fps=8)
    write_gif(tmp_path / "c.gif", frames, fps=8)
    write_npz(tmp_path / "d.npz", frames[None])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "c.gif", "d.npz"]

    # A crash while encoding leaves the previous file untouched and no temporary file behind.
    before = (tmp_path / "a.mp4").read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_mp4(tmp_path / "a.mp4", noise((4, 16, 16, 3), seed=5), fps=8, lossless=True)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_mp4(tmp_path / "new.mp4", frames, fps=8)
    assert (tmp_path / "a.mp4").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "c.gif", "d.npz"]
