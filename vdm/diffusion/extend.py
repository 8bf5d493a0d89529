"""Long videos from a model with a short window: autoregressive sliding windows.

The first window is generated (from given opening frames, or from nothing); every later window
is given the last ``overlap`` frames of the video so far and generates the rest, which is
appended. Frames stay float between windows (no uint8 round trip), and a window's given frames
are never appended twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vdm.errors import UserError

# sample_window(video (B, C, W, H, W), mask (B, W) bool, index) -> (B, C, W, H, W): the window
# with its given frames (mask True) unchanged and the others sampled.
WindowSampler = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def extend_video(
    sample_window: WindowSampler,
    shape: tuple[int, int, int, int],
    total_frames: int,
    window: int,
    overlap: int,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample ``total_frames`` frames, ``window`` at a time.

    Args:
        sample_window: samples one window given its context (see :data:`WindowSampler`);
            ``index`` counts the windows from 0, e.g. to seed each one.
        shape: ``(B, C, H, W)`` of the video.
        total_frames: frames of the result.
        window: frames per window (the model's clip length, or any length it takes).
        overlap: frames each later window is given from the end of the video so far.
        first: optional given opening frames ``(B, C, k, H, W)``, ``k < window``: the first
            window continues them. None generates the first window from nothing.

    Returns:
        float ``(B, C, total_frames, H, W)``; its first ``k`` frames are ``first``.
    """
    b, c, h, w = shape
    if not 1 <= overlap < window:
        raise UserError(
            f"Each window must be given 1 to window - 1 frames: got overlap={overlap} for "
            f"window={window} frames (set extend.overlap / context.frames below the window)."
        )
    if first is not None and not 0 < first.shape[2] < window:
        raise UserError(
            f"{first.shape[2]} given opening frames do not leave a frame to generate in a "
            f"{window}-frame window: lower context.frames."
        )
    if total_frames < 1:
        raise UserError(f"frames={total_frames}: ask for at least one frame.")

    def run(given: torch.Tensor | None, index: int) -> torch.Tensor:
        video = torch.zeros(b, c, window, h, w, device=None if given is None else given.device)
        mask = torch.zeros(b, window, dtype=torch.bool, device=video.device)
        if given is not None:
            video[:, :, : given.shape[2]] = given
            mask[:, : given.shape[2]] = True
        return sample_window(video, mask, index).float()

    video = run(first, 0)
    index = 1
    while video.shape[2] < total_frames:
        new = run(video[:, :, -overlap:], index)
        video = torch.cat([video, new[:, :, overlap:]], dim=2)
        index += 1
    return video[:, :, :total_frames]
