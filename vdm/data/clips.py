"""Which frames make a clip: pure index arithmetic, no I/O.

A clip is ``clip_len`` frames taken every ``stride`` frames, so it spans
``(clip_len - 1)·stride + 1`` frames of the video. Training takes the clip at a random start
(``mode="random"``), validation the centred one (``mode="center"``), so validation sees the same
frames every time.

Videos shorter than the span follow an explicit policy:

- ``skip``: the video cannot give a clip (:class:`ShortVideoError`); datasets leave it out.
- ``loop``: indices wrap around to the start (``i mod num_frames``).
- ``repeat_last``: indices past the end repeat the last frame.
"""

from __future__ import annotations

import numpy as np

from vdm.errors import UserError

MODES = ("random", "center")
SHORT_VIDEO_POLICIES = ("skip", "loop", "repeat_last")


class ShortVideoError(UserError):
    """The video has fewer frames than one clip spans and the policy is ``skip``."""


def clip_span(clip_len: int, stride: int) -> int:
    """Frames of the video one clip covers: ``(clip_len - 1)·stride + 1``."""
    return (clip_len - 1) * stride + 1


def clip_indices(
    num_frames: int,
    clip_len: int,
    stride: int = 1,
    mode: str = "random",
    rng: np.random.Generator | None = None,
    short_video: str = "skip",
) -> list[int]:
    """Frame indices of one clip.

    Args:
        num_frames: frames in the video (≥ 1).
        clip_len: frames in the clip (≥ 1).
        stride: step between consecutive clip frames (≥ 1).
        mode: ``random`` (uniform start among all valid starts) or ``center``.
        rng: the random generator for ``random`` mode (a fresh unseeded one if None).
        short_video: ``skip``, ``loop`` or ``repeat_last``, for videos shorter than the span.

    Returns:
        ``clip_len`` indices in ``[0, num_frames)``, ascending unless the policy wraps.

    Raises:
        ShortVideoError: the video is too short and ``short_video="skip"``.
        ValueError: a bad argument.

    Examples:
        >>> clip_indices(10, 4, stride=2, mode="center")
        [1, 3, 5, 7]
        >>> clip_indices(3, 4, short_video="repeat_last", mode="center")
        [0, 1, 2, 2]
    """
    if num_frames < 1 or clip_len < 1 or stride < 1:
        raise UserError(
            f"Need num_frames, clip_len, stride >= 1; got {num_frames}, {clip_len}, {stride}."
        )
    if mode not in MODES:
        raise UserError(f"Unknown clip mode {mode!r}: use one of {', '.join(MODES)}.")
    if short_video not in SHORT_VIDEO_POLICIES:
        raise UserError(
            f"Unknown short_video policy {short_video!r}: use one of "
            f"{', '.join(SHORT_VIDEO_POLICIES)} (config key data.short_video)."
        )
    rng = rng if rng is not None else np.random.default_rng()
    span = clip_span(clip_len, stride)
    offsets = np.arange(clip_len) * stride
    if num_frames >= span:
        last_start = num_frames - span
        start = int(rng.integers(0, last_start + 1)) if mode == "random" else last_start // 2
        return (start + offsets).tolist()
    if short_video == "skip":
        raise ShortVideoError(
            f"{num_frames} frames < {span} needed for {clip_len} frames at stride {stride}"
        )
    if short_video == "loop":
        start = int(rng.integers(0, num_frames)) if mode == "random" else 0
        return ((start + offsets) % num_frames).tolist()
    return np.minimum(offsets, num_frames - 1).tolist()
