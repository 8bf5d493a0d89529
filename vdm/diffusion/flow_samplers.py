"""ODE samplers for :class:`~vdm.diffusion.flow.FlowMatching`: Euler (first order) and Heun
(second order), on the time grid of diffusers' ``FlowMatchEulerDiscreteScheduler``.

Same interface as the DDPM samplers: ``sampler.sample(process, model_fn, shape, generator=None,
x_T=None, progress=False, device=None, context=None)``, with ``model_fn(x, t)`` the denoiser (or
:func:`~vdm.diffusion.samplers.guided`) and ``t`` the model's time, ``t · 1000``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from vdm.diffusion.flow import FlowMatching, shift_time
from vdm.diffusion.sampling_loop import ProcessModel, SamplingLoop
from vdm.errors import UserError

# velocity(x, t) -> v: the model at the sample x and one float time t in [0, 1].
Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def flow_sigmas(steps: int, shift: float, num_train_steps: int = 1000) -> torch.Tensor:
    """The ``steps + 1`` descending times a flow sampler visits, ending at 0.

    ``shift(linspace(1, σ_min, steps))`` followed by 0, where ``σ_min`` is the smallest of
    ``num_train_steps`` shifted training times: the grid diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=...).set_timesteps(steps)`` builds, so runs compare
    one to one (its last non-zero time is shifted twice, as there).
    """
    if steps < 1:
        raise UserError(f"sampler.steps={steps}: must be >= 1.")
    sigma_min = shift_time(torch.tensor(1.0 / num_train_steps, dtype=torch.float64), shift)
    grid = torch.linspace(1.0, float(sigma_min), steps, dtype=torch.float64)
    return torch.cat([shift_time(grid, shift), torch.zeros(1, dtype=torch.float64)])


class FlowSampler(SamplingLoop):
    """Integrates ``dx/dt = v(x, t)`` from t = 1 (noise) to t = 0 over :func:`flow_sigmas`.

    Subclasses implement :meth:`step`; the loop is :meth:`SamplingLoop.sample`.

    Args:
        steps: time steps (Heun calls the model twice per step).
        shift: the time grid's shift; None = the process's ``shift``.
    """

    process_kind = "flow"
    wrong_process = (
        "integrates a rectified flow, but the model was trained with DDPM: use sampler=ddim, "
        "ddpm or dpmpp (or train with diffusion=flow)."
    )
    order = 1

    def __init__(self, steps: int = 20, shift: float | None = None) -> None:
        if steps < 1:
            raise UserError(f"sampler.steps={steps}: must be >= 1.")
        self.steps, self.shift = steps, shift

    def sigmas(self, process: FlowMatching) -> torch.Tensor:
        """The ``steps + 1`` descending times visited (:func:`flow_sigmas`), float64."""
        return flow_sigmas(self.steps, process.shift if self.shift is None else self.shift)

    def intervals(self, process: FlowMatching) -> list[tuple[float, float]]:
        """``(σ, σ_next)`` for every step, from 1 down to 0."""
        return list(itertools.pairwise(self.sigmas(process).tolist()))

    def move(
        self,
        process: FlowMatching,
        x: torch.Tensor,
        t: float,
        t_next: float,
        model: ProcessModel,
        generator: torch.Generator | None,
        state: dict,
    ) -> torch.Tensor:
        """:meth:`step` from ``t`` to ``t_next``, with the model as a velocity field."""

        def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
            return model(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32))

        return self.step(x, t, t_next, velocity)

    def step(
        self, x: torch.Tensor, sigma: float, sigma_next: float, velocity: Velocity
    ) -> torch.Tensor:
        """The sample at ``sigma_next`` from ``x`` at ``sigma``."""
        raise NotImplementedError


class FlowEulerSampler(FlowSampler):
    """Euler's method: ``x ← x + (σ_next − σ)·v(x, σ)``, one model call per step (diffusers'
    ``FlowMatchEulerDiscreteScheduler``)."""

    def step(
        self, x: torch.Tensor, sigma: float, sigma_next: float, velocity: Velocity
    ) -> torch.Tensor:
        return x + (sigma_next - sigma) * velocity(x, sigma)


class FlowHeunSampler(FlowSampler):
    """Heun's method (second order): an Euler step, then the mean of the velocities at both
    ends, ``2·steps`` model calls. The last step keeps the correction too: unlike EDM's
    ``(x − D)/σ``, a flow's velocity is finite at t = 0, and with diffusers' grid the last step
    (from a σ_min that does not shrink with more steps) would otherwise cap the accuracy."""

    order = 2

    def step(
        self, x: torch.Tensor, sigma: float, sigma_next: float, velocity: Velocity
    ) -> torch.Tensor:
        v = velocity(x, sigma)
        x_euler = x + (sigma_next - sigma) * v
        return x + (sigma_next - sigma) * 0.5 * (v + velocity(x_euler, sigma_next))
