"""The loop every sampler shares, DDPM family and flow alike: from noise to a clean sample.

:meth:`SamplingLoop.sample` checks the process family, draws ``x_T``, puts the given frames of
``context=(video, mask)`` in, walks the sampler's time grid with a progress bar and resets the
given frames after every step. A sampler supplies only its grid
(:meth:`~SamplingLoop.intervals`) and one step along it (:meth:`~SamplingLoop.move`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from rich.progress import Progress

from vdm.diffusion.objective import TrainingObjective
from vdm.errors import UserError

# model_fn(x_t, t) -> output, or model_fn(x_t, t_frames, context=mask) with given frames.
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The model as a step sees it: model(x, t) with ``t (B,)`` in the process's own time (a long
# step, or a float time in [0, 1]); returns the float32 output. The loop adds the given frames.
ProcessModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def given_frames(
    context: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``context = (video, mask)`` checked against the sample ``x`` and moved to its device:
    float32 video shaped like ``x`` and a bool ``(B, T)`` mask, True where a frame is given."""
    video, mask = context
    video = video.to(device=x.device, dtype=torch.float32)
    mask = mask.to(x.device).bool()
    if video.shape != x.shape or mask.shape != (x.shape[0], x.shape[2]):
        raise UserError(
            f"context=(video, mask) must be {tuple(x.shape)} and "
            f"{(x.shape[0], x.shape[2])}; got {tuple(video.shape)}, {tuple(mask.shape)}."
        )
    return video, mask


class SamplingLoop:
    """Runs a reverse process: draw ``x_T``, step through a time grid, return ``x0``.

    A sampler family sets :attr:`process_kind` and :attr:`wrong_process` and implements
    :meth:`intervals` (the grid) and :meth:`move` (one step); the loop around them, the given
    frames and the progress bar are here.

    Attributes:
        process_kind: the ``kind`` of process this sampler runs (``ddpm`` or ``flow``).
        wrong_process: the end of the error for a process of the other kind, naming the
            samplers that fit it.
    """

    process_kind: str
    wrong_process: str

    def intervals(self, process: TrainingObjective) -> list[tuple[Any, Any]]:
        """The ``(t, t_next)`` of every step, in order: one model evaluation point each."""
        raise NotImplementedError

    def move(
        self,
        process: TrainingObjective,
        x: torch.Tensor,
        t: Any,
        t_next: Any,
        model: ProcessModel,
        generator: torch.Generator | None,
        state: dict,
    ) -> torch.Tensor:
        """One step of the sample ``x`` from time ``t`` to ``t_next``.

        Args:
            process: the process being reversed.
            x: the sample at ``t``, float32 of the output shape.
            t, t_next: one pair of :meth:`intervals`.
            model: the denoiser at any ``(x, t (B,))``; may be called more than once.
            generator: RNG for noise the step adds.
            state: per-run scratch space, kept across steps; ``state["context"]`` holds
                ``(video, given)`` with ``given`` the mask shaped ``(B, 1, T, 1, 1)``.

        Returns:
            The sample at ``t_next``; the loop then resets its given frames.
        """
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        process: TrainingObjective,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from noise to a clean sample.

        Args:
            process: the process the model was trained with.
            model_fn: ``model_fn(x_t, t) -> output`` with ``t (B,)`` the model's time: the long
                step for DDPM, ``t · 1000`` for flow (:meth:`TrainingObjective.model_time`).
            shape: output shape, e.g. ``(B, C, T, H, W)``.
            generator: RNG for the initial noise and any noise added along the way.
            x_T: the initial noise; drawn from ``generator`` when None.
            progress: show a progress bar over steps.
            device: where to sample; defaults to ``x_T``'s device, else the generator's, else CPU.
            context: ``(video, mask)``: clean frames ``video`` of ``shape`` and a bool ``(B, T)``
                mask, True where a frame is given. Given frames come back exactly as given, and
                the model is called as ``model_fn(x_t, t_frames, context=mask)`` with time 0
                for them in the per-frame times ``t_frames (B, T)``.

        Returns:
            float32 tensor of ``shape``: the sample.
        """
        if getattr(process, "kind", "ddpm") != self.process_kind:
            raise UserError(f"sampler={type(self).__name__} {self.wrong_process}")
        if device is None:
            device = (
                x_T.device
                if x_T is not None
                else (generator.device if generator is not None else "cpu")
            )
        x = (
            x_T.to(device=device, dtype=torch.float32)
            if x_T is not None
            else process.noise(shape, generator, device)
        )
        state: dict = {}
        mask = None
        if context is not None:
            video, mask = given_frames(context, x)
            given = mask[:, None, :, None, None]
            state["context"] = (video, given)
            x = torch.where(given, video, x)

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if mask is None:
                return model_fn(x, process.model_time(t)).float()
            # Given frames are clean: the model sees them at time 0 (an int 0 keeps t's dtype).
            t_frames = torch.where(mask, 0, t[:, None])
            return model_fn(x, process.model_time(t_frames), context=mask).float()

        intervals = self.intervals(process)
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(type(self).__name__, total=len(intervals))
            for t, t_next in intervals:
                x = self.move(process, x, t, t_next, model, generator, state)
                if mask is not None:
                    x = torch.where(given, video, x)
                bar.advance(task)
        return x
