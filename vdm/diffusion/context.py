"""Context frames: which frames of a clip are given (clean) and which the model generates.

A context mask is a bool tensor ``(B, T)``, True where a frame is given. One model trained on a
mixture of masks does plain generation (no frame given), prediction (the first frames given),
interpolation (the first and last frames given) and, window by window, long videos (MCVD,
RaMViD, FDM; Open-Sora's mask strategy). Masks are pure tensor arithmetic: no model, no files.
"""

from __future__ import annotations

import torch

from vdm.errors import UserError

TASKS = ("generate", "predict", "interpolate", "extend")


class ContextMasks:
    """Draws a context mask per training clip from a mixture of the four tasks.

    Each clip gets one kind, drawn with the given shares (relative weights; they need not sum
    to one):

    - ``none``: no frame given (plain generation);
    - ``prefix``: the first ``k`` frames, ``k`` uniform in ``[1, T/2]`` (prediction);
    - ``interpolate``: the first ``k`` and the last ``k``, ``k`` uniform in ``[1, T/4]``
      (interpolation);
    - ``random``: each frame with probability 1/2, at least one given (an arbitrary subset).

    Every clip keeps at least one frame to generate. Clips too short for a kind (a prefix needs
    T ≥ 2, interpolation T ≥ 3) get no context instead.

    Example:
        >>> masks = ContextMasks(none=0.3, prefix=0.35, interpolate=0.2, random=0.15)
        >>> masks.sample(4, 8, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 8])

    Args:
        none: share of clips with no given frame.
        prefix: share of clips whose first frames are given.
        interpolate: share of clips whose first and last frames are given.
        random: share of clips with a random subset of given frames.
    """

    KINDS = ("none", "prefix", "interpolate", "random")

    def __init__(
        self,
        none: float = 0.3,
        prefix: float = 0.35,
        interpolate: float = 0.2,
        random: float = 0.15,
    ) -> None:
        shares = torch.tensor([none, prefix, interpolate, random], dtype=torch.float64)
        if (shares < 0).any() or shares.sum() <= 0:
            raise UserError(
                f"context.masks shares must be >= 0 with a positive sum, got none={none}, "
                f"prefix={prefix}, interpolate={interpolate}, random={random}."
            )
        self.shares = shares / shares.sum()

    def sample(
        self,
        batch: int,
        frames: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Bool ``(batch, frames)`` context masks, one kind per clip.

        Every random number is drawn whatever the kinds turn out to be, so the stream of a
        generator advances the same way for any shares.
        """

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=device)

        position = torch.arange(frames, device=device)[None]  # (1, T)
        cumulative = self.shares.cumsum(0).to(device=device, dtype=torch.float32)
        kind = torch.searchsorted(cumulative, uniform(batch).contiguous(), right=True)
        kind = kind.clamp(max=len(self.KINDS) - 1)  # u = 1 - ε rounding past the last share

        prefix_max = min(frames // 2, frames - 1)
        k = 1 + (uniform(batch) * max(prefix_max, 1)).long()
        prefix = position < k[:, None]

        ends_max = min(max(frames // 4, 1), (frames - 1) // 2)
        k = 1 + (uniform(batch) * max(ends_max, 1)).long()
        ends = (position < k[:, None]) | (position >= frames - k[:, None])

        subset = uniform(batch, frames) < 0.5
        pick = torch.nn.functional.one_hot((uniform(batch) * frames).long(), frames).bool()
        full, empty = subset.all(1, keepdim=True), ~subset.any(1, keepdim=True)
        subset = torch.where(full, subset & ~pick, torch.where(empty, pick, subset))

        masks = torch.zeros(batch, frames, dtype=torch.bool, device=device)
        if prefix_max >= 1:
            masks = torch.where((kind == 1)[:, None], prefix, masks)
        if ends_max >= 1:
            masks = torch.where((kind == 2)[:, None], ends, masks)
        if frames >= 2:
            masks = torch.where((kind == 3)[:, None], subset, masks)
        return masks


def task_mask(task: str, frames: int, given: int, device: torch.device | str = "cpu"):
    """The bool ``(frames,)`` context mask of a sampling task.

    Args:
        task: ``generate`` (nothing given), ``predict`` / ``extend`` (the first ``given``
            frames) or ``interpolate`` (the first ``given`` and the last ``given``).
        frames: frames in the window.
        given: frames given at each end (``predict``, ``extend``, ``interpolate``).

    Raises:
        ValueError: an unknown task, or ``given`` frames that leave none to generate.
    """
    if task not in TASKS:
        raise UserError(f"Unknown task={task}: use one of {', '.join(TASKS)}.")
    position = torch.arange(frames, device=device)
    if task == "generate":
        return torch.zeros(frames, dtype=torch.bool, device=device)
    total = 2 * given if task == "interpolate" else given
    if given < 1 or total >= frames:
        raise UserError(
            f"context.frames={given} gives {total} of the {frames} frames of a window for "
            f"task={task}: leave at least one to generate (context.frames < "
            f"{(frames + 1) // 2 if task == 'interpolate' else frames}), or raise frames."
        )
    if task == "interpolate":
        return (position < given) | (position >= frames - given)
    return position < given
