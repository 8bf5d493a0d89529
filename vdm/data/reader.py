"""The one place that reads video files: open a video, read its metadata, decode frames.

Decoding goes through decord; PyAV only steps in for the frame sizes where decord 0.6 fails.

decord raises ``RuntimeError`` for files it cannot open and ``decord.DECORDError`` (which is
*not* a ``RuntimeError``) for files it opens but cannot demux, and ``IndexError`` for frames past
the end. All three become :class:`VideoReadError`, so callers handle one exception type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np
import torch
import torch.nn.functional as F

from vdm.errors import DataError

DECODE_ERRORS = (RuntimeError, decord.DECORDError, IndexError)


class VideoReadError(DataError):
    """A video that cannot be opened or decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read video {path}: {reason}")


def _reason(error: BaseException) -> str:
    """First line of decord's message, which is often a long multi-line backtrace."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


@dataclass(frozen=True)
class VideoInfo:
    """What the index keeps about a video: decodable frame count, fps and size."""

    num_frames: int
    fps: float
    height: int
    width: int


class VideoReader:
    """A decord ``VideoReader`` that raises :class:`VideoReadError` and returns numpy frames.

    Args:
        path: the video file.
        width: decode straight to this width (-1 = native); decord resizes while decoding,
            which is much cheaper than decoding at full size and resizing after.
        height: decode straight to this height (-1 = native).
        num_threads: decoder threads; 1 is best inside DataLoader workers, which already run
            in parallel.
    """

    def __init__(
        self, path: str | Path, width: int = -1, height: int = -1, num_threads: int = 1
    ) -> None:
        self.path = str(path)
        self.width, self.height, self.num_threads = width, height, num_threads
        if not Path(self.path).is_file():
            raise VideoReadError(self.path, "no such file")
        try:
            self._reader = decord.VideoReader(
                self.path, width=width, height=height, num_threads=num_threads
            )
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except DECODE_ERRORS as error:
            raise VideoReadError(self.path, _reason(error)) from None

    def __len__(self) -> int:
        return self.num_frames

    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of decoded frames."""
        try:
            height, width = self._reader[0].shape[:2]
        except DECODE_ERRORS as error:
            raise VideoReadError(self.path, _reason(error)) from None
        return int(height), int(width)

    def get_batch(self, indices: list[int]) -> np.ndarray:
        """Decode frames ``indices`` (any order, repeats allowed) → uint8 ``(T, H, W, 3)``."""
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise VideoReadError(
                self.path, f"frame indices {bad[:5]} out of range [0, {self.num_frames})"
            )
        try:
            return self._reader.get_batch(list(indices)).asnumpy()
        except DECODE_ERRORS as error:
            if "must exactly match" in str(error):
                return self._decode_with_pyav(indices)
            raise VideoReadError(self.path, _reason(error)) from None

    def _decode_with_pyav(self, indices: list[int]) -> np.ndarray:
        """Fallback for a decord 0.6 bug: for some frame sizes (square 16, 24 or 48 px, exact
        halves of the native size, ...) its frame copy sees padded rows and fails with
        "The size must exactly match". Decode those files with PyAV instead, counting frames
        from the start, and resize with torch."""
        wanted = sorted(set(indices))
        decoded: dict[int, np.ndarray] = {}
        try:
            with av.open(self.path) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted:
                        decoded[i] = frame.to_ndarray(format="rgb24")
                    if i >= wanted[-1]:
                        break
        except (av.FFmpegError, OSError) as error:
            raise VideoReadError(self.path, _reason(error)) from None
        missing = [i for i in wanted if i not in decoded]
        if missing:
            raise VideoReadError(self.path, f"frames {missing[:5]} do not decode")
        frames = np.stack([decoded[i] for i in indices])
        if self.width <= 0 or frames.shape[1:3] == (self.height, self.width):
            return frames
        resized = F.interpolate(
            torch.from_numpy(frames).permute(0, 3, 1, 2).float(),
            size=(self.height, self.width),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def probe(path: str | Path) -> VideoInfo:
    """Open ``path`` and check that its last frame decodes: container frame counts can lie
    (truncated downloads keep their header), and a bad count would fail at training time.

    Raises:
        VideoReadError: the file cannot be opened, has no frames, or its last frame fails.
    """
    reader = VideoReader(path)
    if reader.num_frames < 1:
        raise VideoReadError(path, "no video frames")
    last = reader.get_batch([reader.num_frames - 1])
    height, width = last.shape[1:3]
    return VideoInfo(reader.num_frames, reader.fps, int(height), int(width))
