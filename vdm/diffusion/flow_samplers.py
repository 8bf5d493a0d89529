"""ODE samplers for :class:`~vdm.diffusion.flow.FlowMatching`: Euler (first order) and Heun
(second order), on the time grid of diffusers' ``FlowMatchEulerDiscreteScheduler``.

Same interface as the DDPM samplers: ``sampler.sample(process, model_fn, shape, generator=None,
x_T=None, progress=False, device=None, context=None)``, with ``model_fn(x, t)`` the denoiser (or
:func:`~vdm.diffusion.samplers.guided`) and ``t`` the model's time, ``t · 1000``.
"""

from __future__ import annotations

import itertools

import torch
from rich.progress import Progress

from vdm.diffusion.flow import FlowMatching, shift_time
from vdm.diffusion.samplers import ModelFn, given_frames


def flow_sigmas(steps: int, shift: float, num_train_steps: int = 1000) -> torch.Tensor:
    """The ``steps + 1`` descending times a flow sampler visits, ending at 0.

    ``shift(linspace(1, σ_min, steps))`` followed by 0, where ``σ_min`` is the smallest of
    ``num_train_steps`` shifted training times: the grid diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=...).set_timesteps(steps)`` builds, so runs compare
    one to one (its last non-zero time is shifted twice, as there).
    """
    if steps < 1:
        raise ValueError(f"sampler.steps={steps}: must be >= 1.")
    sigma_min = shift_time(torch.tensor(1.0 / num_train_steps, dtype=torch.float64), shift)
    grid = torch.linspace(1.0, float(sigma_min), steps, dtype=torch.float64)
    return torch.cat([shift_time(grid, shift), torch.zeros(1, dtype=torch.float64)])


class FlowSampler:
    """Integrates ``dx/dt = v(x, t)`` from t = 1 (noise) to t = 0 over :func:`flow_sigmas`.

    Args:
        steps: time steps (Heun calls the model twice per step).
        shift: the time grid's shift; None = the process's ``shift``.
    """

    order = 1

    def __init__(self, steps: int = 20, shift: float | None = None) -> None:
        if steps < 1:
            raise ValueError(f"sampler.steps={steps}: must be >= 1.")
        self.steps, self.shift = steps, shift

    def sigmas(self, process: FlowMatching) -> torch.Tensor:
        return flow_sigmas(self.steps, process.shift if self.shift is None else self.shift)

    @torch.no_grad()
    def sample(
        self,
        process: FlowMatching,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """A sample of ``shape`` from noise ``x_T`` (drawn from ``generator`` when None).

        ``context=(video, mask)``: frames where the bool ``(B, T)`` mask is True are given;
        they stay exactly as given and the model sees them at time 0.
        """
        if not isinstance(process, FlowMatching):
            raise ValueError(
                f"sampler={type(self).__name__} integrates a rectified flow, but the model was "
                "trained with DDPM: use sampler=ddim, ddpm or dpmpp (or train with "
                "diffusion=flow)."
            )
        if device is None:
            device = x_T.device if x_T is not None else (generator.device if generator else "cpu")
        x = x_T.to(device=device, dtype=torch.float32) if x_T is not None else None
        if x is None:
            x = process.noise(shape, generator, device)
        mask = given = video = None
        if context is not None:
            video, mask = given_frames(context, x)
            given = mask[:, None, :, None, None]
            x = torch.where(given, video, x)

        def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
            t = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
            if mask is None:
                return model_fn(x, process.model_time(t)).float()
            t_frames = torch.where(mask, 0.0, t[:, None])  # given frames: clean, time 0
            return model_fn(x, process.model_time(t_frames), context=mask).float()

        sigmas = self.sigmas(process).tolist()
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(type(self).__name__, total=self.steps)
            for sigma, sigma_next in itertools.pairwise(sigmas):
                x = self.step(x, sigma, sigma_next, velocity)
                if given is not None:
                    x = torch.where(given, video, x)
                bar.advance(task)
        return x

    def step(self, x, sigma: float, sigma_next: float, velocity) -> torch.Tensor:
        raise NotImplementedError


class FlowEulerSampler(FlowSampler):
    """Euler's method: ``x ← x + (σ_next − σ)·v(x, σ)``, one model call per step (diffusers'
    ``FlowMatchEulerDiscreteScheduler``)."""

    def step(self, x, sigma, sigma_next, velocity):
        return x + (sigma_next - sigma) * velocity(x, sigma)


class FlowHeunSampler(FlowSampler):
    """Heun's method (second order): an Euler step, then the mean of the velocities at both
    ends, ``2·steps`` model calls. The last step keeps the correction too: unlike EDM's
    ``(x − D)/σ``, a flow's velocity is finite at t = 0, and with diffusers' grid the last step
    (from a σ_min that does not shrink with more steps) would otherwise cap the accuracy."""

    order = 2

    def step(self, x, sigma, sigma_next, velocity):
        v = velocity(x, sigma)
        x_euler = x + (sigma_next - sigma) * v
        return x + (sigma_next - sigma) * 0.5 * (v + velocity(x_euler, sigma_next))
