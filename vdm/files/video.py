"""Writing videos to disk: MP4 (lossless or web-playable), GIF, NPZ, and a grid tiler.

This is the only module that writes video files. Frames are uint8 ``(T, H, W, 3)`` RGB; model
outputs, float ``(B, C, T, H, W)`` in ``[-1, 1]``, go through :func:`to_uint8` first. Every
writer creates the parent folders and writes atomically (a temporary name in the same folder,
then ``os.replace``), so a crash never leaves a truncated file under the final name.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from vdm.errors import UserError

if TYPE_CHECKING:
    # Only for annotations: to_uint8 uses tensor methods, so worker processes that merely write
    # files (the shapes renderer) do not pay for importing torch.
    import torch

# Frame rates such as 29.97 are stored as exact fractions over a small denominator (NTSC 1001).
MAX_FPS_DENOMINATOR = 1001
# x264's visually near-lossless setting; 0 would be lossless but not playable in browsers.
LOSSY_CRF = 18


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Convert float video in ``[-1, 1]`` to uint8 frames, channels last.

    Values outside ``[-1, 1]`` are clamped; ``x`` maps to ``round((x + 1) * 127.5)``.

    Args:
        video: ``(B, C, T, H, W)`` batch or a single ``(C, T, H, W)`` video.

    Returns:
        uint8 ``(B, T, H, W, C)``, or ``(T, H, W, C)`` for a single video.
    """
    if video.dim() not in (4, 5):
        raise UserError(
            f"to_uint8 expects a (B, C, T, H, W) or (C, T, H, W) tensor, got shape "
            f"{tuple(video.shape)}: add or remove the batch dimension."
        )
    pixels = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    # Channels last: (..., C, T, H, W) -> (..., T, H, W, C).
    order = (0, 2, 3, 4, 1) if video.dim() == 5 else (1, 2, 3, 0)
    return pixels.byte().permute(*order).cpu().contiguous().numpy()


def write_mp4(
    path: str | os.PathLike[str], frames: np.ndarray, fps: float, lossless: bool = False
) -> Path:
    """Write frames as an H.264 MP4 at a constant frame rate.

    ``lossless=True`` encodes RGB directly (``libx264rgb``, crf 0): decoding to rgb24 gives the
    exact input back, but few players (no browser) support that profile. ``lossless=False``
    encodes yuv420p (``libx264``, crf 18) for browsers and wandb; yuv420p halves the colour
    resolution and needs even sizes, so odd heights/widths get one black row/column at the
    bottom/right.

    Args:
        path: destination file; parent folders are created.
        frames: uint8 ``(T, H, W, 3)`` RGB, ``T >= 1``.
        fps: frames per second, > 0; non-integers such as 29.97 are kept as a fraction.
        lossless: exact RGB round trip instead of a web-playable file.

    Returns:
        The path written.
    """
    _check_frames(frames, "write_mp4")
    rate = _frame_rate(fps)
    if not lossless:
        frames = _pad_to_even(frames)
    num_frames, height, width, _ = frames.shape
    if lossless:
        codec, pix_fmt, crf = "libx264rgb", "rgb24", 0
    else:
        codec, pix_fmt, crf = "libx264", "yuv420p", LOSSY_CRF
    # faststart moves the index to the front so browsers can play before the download ends.
    options = {"movflags": "+faststart"}
    with _atomic(path) as tmp, av.open(str(tmp), "w", format="mp4", options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = 1 / rate
        stream.options = {"crf": str(crf)}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            # pts counts frames in a 1/fps time base: constant frame rate by construction.
            frame.pts = index
            frame.time_base = stream.codec_context.time_base
            out.mux(stream.encode(frame if lossless else frame.reformat(format=pix_fmt)))
        out.mux(stream.encode(None))
    return Path(path)


def write_gif(
    path: str | os.PathLike[str], frames: np.ndarray, fps: float, loop: bool = True
) -> Path:
    """Write frames as an animated GIF with FFmpeg's ``gif`` encoder.

    A clip with at most 256 distinct colours keeps them exactly (one palette for the whole
    clip); richer clips are quantised to the 216-colour web-safe cube. GIF stores frame delays
    in whole hundredths of a second, so the played rate is only close to ``fps`` (8 fps is
    stored as a 12 cs delay, 8.33 fps).

    Args:
        path: destination file; parent folders are created.
        frames: uint8 ``(T, H, W, 3)`` RGB, ``T >= 1``.
        fps: frames per second, > 0.
        loop: repeat forever (``True``) or play once.

    Returns:
        The path written.
    """
    _check_frames(frames, "write_gif")
    rate = _frame_rate(fps)
    indices, palette = _palettize(frames)
    num_frames, height, width = indices.shape
    # The gif muxer's loop option: 0 repeats forever, -1 writes no loop extension (play once).
    options = {"loop": "0" if loop else "-1"}
    with _atomic(path) as tmp, av.open(str(tmp), "w", format="gif", options=options) as out:
        stream = out.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "pal8"
        stream.codec_context.time_base = 1 / rate
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray((indices[index], palette), format="pal8")
            frame.pts = index
            frame.time_base = stream.codec_context.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)


def make_grid(videos: np.ndarray, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile clips into one video, row-major, with black between tiles.

    Args:
        videos: ``(N, T, H, W, C)`` clips, ``N >= 1`` (any dtype; black is 0).
        nrow: clips per row; default ``ceil(sqrt(N))``. Missing tiles in the last row are black.
        padding: pixels of black between neighbouring tiles (none around the border).

    Returns:
        ``(T, rows·H + (rows-1)·padding, nrow·W + (nrow-1)·padding, C)`` with
        ``rows = ceil(N / nrow)``.
    """
    if videos.ndim != 5 or videos.shape[0] < 1:
        raise UserError(
            f"make_grid expects clips (N, T, H, W, C) with N >= 1, got shape {videos.shape}: "
            "stack the clips along a new first axis."
        )
    num, frames, height, width, channels = videos.shape
    cols = math.ceil(math.sqrt(num)) if nrow is None else nrow
    if cols < 1 or padding < 0:
        raise UserError(f"make_grid needs nrow >= 1 and padding >= 0, got {nrow}, {padding}.")
    rows = math.ceil(num / cols)
    grid = np.zeros(
        (frames, rows * (height + padding) - padding, cols * (width + padding) - padding, channels),
        dtype=videos.dtype,
    )
    for index in range(num):
        top = (index // cols) * (height + padding)
        left = (index % cols) * (width + padding)
        grid[:, top : top + height, left : left + width] = videos[index]
    return grid


def slug(text: str, max_chars: int = 60) -> str:
    """``text`` as a file-name part: lower-case letters, digits and ``_`` (``a red square``
    → ``a_red_square``), at most ``max_chars`` long; ``empty`` for nothing."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "_".join(words)[:max_chars].rstrip("_") or "empty"


def write_clips(
    out_dir: str | os.PathLike[str], videos: np.ndarray, fps: float, upscale: int = 1,
    nrow: int | None = None, names: list[str] | None = None, grid_name: str = "grid",
) -> list[Path]:  # fmt: skip
    """Write ``sample_XXXX.mp4`` per clip and all of them tiled as ``grid.gif``.

    Args:
        out_dir: the folder; created if needed.
        videos: uint8 ``(N, T, H, W, 3)``.
        fps: frame rate of the files.
        upscale: nearest-neighbour factor applied to the written frames (small clips).
        nrow: clips per grid row; None = as ``make_grid``.
        names: a text per clip (its prompt) whose :func:`slug` ends its file name,
            ``sample_XXXX_<slug>.mp4``; None = ``sample_XXXX.mp4``.
        grid_name: the grid's file name, without ``.gif``.

    Returns:
        The mp4 paths, in clip order.
    """
    out_dir = Path(out_dir)
    if upscale > 1:
        videos = videos.repeat(upscale, axis=2).repeat(upscale, axis=3)
    stems = [f"sample_{i:04d}" for i in range(len(videos))]
    if names is not None:
        stems = [f"{stem}_{slug(name)}" for stem, name in zip(stems, names, strict=True)]
    paths = [
        write_mp4(out_dir / f"{stem}.mp4", v, fps) for stem, v in zip(stems, videos, strict=True)
    ]
    write_gif(out_dir / f"{grid_name}.gif", make_grid(videos, nrow=nrow), fps)
    return paths


def write_npz(path: str | os.PathLike[str], videos: np.ndarray, **extra: np.ndarray) -> Path:
    """Save clips to a compressed ``.npz`` under the key ``videos``.

    Args:
        path: destination file, kept as given (no ``.npz`` is appended); parent folders are
            created.
        videos: uint8 ``(N, T, H, W, 3)``.
        **extra: more arrays, saved under their keyword (e.g. ``context_mask``).

    Returns:
        The path written.
    """
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise UserError(
            f"write_npz expects uint8 clips (N, T, H, W, 3), got {videos.dtype} {videos.shape}: "
            "convert model output with vdm.files.video.to_uint8."
        )
    with _atomic(path) as tmp, open(tmp, "wb") as file:
        # A file object, not a name: np.savez would append ".npz" to the temporary name.
        np.savez_compressed(file, videos=videos, **extra)
    return Path(path)


@contextmanager
def _atomic(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is a rename within one filesystem (atomic on POSIX). A random
    # name rather than tempfile.mkstemp, whose 0600 mode would stick to the final file.
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _check_frames(frames: np.ndarray, caller: str) -> None:
    """Raise unless ``frames`` is uint8 ``(T, H, W, 3)`` with ``T >= 1``."""
    if (
        not isinstance(frames, np.ndarray)
        or frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[-1] != 3
        or min(frames.shape[:3]) < 1
    ):
        described = f"{frames.dtype} {frames.shape}" if hasattr(frames, "shape") else type(frames)
        raise UserError(
            f"{caller} expects uint8 RGB frames (T, H, W, 3), got {described}: convert float "
            "video with vdm.files.video.to_uint8 and pass one clip at a time."
        )


def _frame_rate(fps: float) -> Fraction:
    """``fps`` as an exact fraction, e.g. 29.97 -> 2997/100; raise unless it is positive."""
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise UserError(f"fps must be a positive number, got {fps!r}.")
    return Fraction(fps).limit_denominator(MAX_FPS_DENOMINATOR)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Add one black row/column at the bottom/right when height/width is odd (yuv420p)."""
    _, height, width, _ = frames.shape
    if height % 2 == 0 and width % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))


def _palettize(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette indices ``(T, H, W)`` uint8 and the ``(256, 4)`` ARGB palette PyAV's pal8 wants."""
    rgb = frames.astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    if len(colours) > 256:
        # Too many colours for one GIF palette: snap each channel to the 6 levels 0, 51, …, 255.
        levels = np.rint(frames / 51.0).astype(np.uint32)
        inverse = (levels[..., 0] * 36 + levels[..., 1] * 6 + levels[..., 2]).ravel()
        cube = np.arange(216, dtype=np.uint32)
        colours = ((cube // 36 * 51) << 16) | ((cube // 6 % 6 * 51) << 8) | (cube % 6 * 51)
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[:, 0] = 255  # opaque
    palette[: len(colours), 1] = colours >> 16
    palette[: len(colours), 2] = (colours >> 8) & 255
    palette[: len(colours), 3] = colours & 255
    indices = inverse.reshape(frames.shape[:3]).astype(np.uint8)
    return indices, palette
