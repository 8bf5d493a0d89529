"""Samplers for the reverse process: DDPM (ancestral), DDIM and DPM-Solver++(2M).

Every sampler walks a descending list of step indices and lands, at the last step, on the
clean estimate (ᾱ = 1, as diffusers does with ``set_alpha_to_one=True``). Each takes
``model_fn(x_t, t) -> output`` of the diffusion's prediction kind; class-conditional models
enter through :func:`guided`. With ``context=(video, mask)`` the given frames stay clean: they
are reset to ``video`` after every step, their x0 estimate is ``video`` itself, and the model is
called as ``model_fn(x_t, t_frames, context=mask)`` with step 0 for given frames. The loop,
shared with the flow samplers, is :class:`~vdm.diffusion.sampling_loop.SamplingLoop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.sampling_loop import ModelFn, ProcessModel, SamplingLoop
from vdm.diffusion.sampling_loop import given_frames as given_frames  # re-exported
from vdm.errors import UserError

SPACINGS = ("leading", "trailing", "linspace")


def timestep_schedule(num_steps: int, steps: int, spacing: str = "trailing") -> list[int]:
    """Descending step indices for a sampler of ``steps`` steps over ``num_steps`` (T).

    Same meaning as diffusers' ``timestep_spacing`` (Lin et al. 2023, Table 2):
    ``linspace`` rounds ``linspace(0, T-1, steps)``; ``leading`` takes multiples of
    ``T // steps`` from 0 (never reaches T-1); ``trailing`` counts down from T-1 in steps of
    ``T / steps`` (starts from the noisiest step, which is why it is the default).

    Args:
        num_steps: training steps T.
        steps: sampling steps, ``1 <= steps <= T``.
        spacing: ``leading``, ``trailing`` or ``linspace``.

    Returns:
        ``steps`` distinct indices in ``[0, T)``, in descending order.
    """
    if not 1 <= steps <= num_steps:
        raise UserError(
            f"Sampling steps must be in [1, {num_steps}] (the schedule's num_steps), got {steps} "
            "(config key sampler.steps)."
        )
    if spacing == "linspace":
        ts = np.linspace(0, num_steps - 1, steps).round()
    elif spacing == "leading":
        ts = np.arange(steps) * (num_steps // steps)
    elif spacing == "trailing":
        # round(T - i·T/steps) - 1 for i = 0..steps-1; written without np.arange over floats,
        # whose length can be off by one through rounding.
        ts = np.round(num_steps - np.arange(steps) * num_steps / steps) - 1
    else:
        raise UserError(
            f"Unknown timestep spacing {spacing!r}: use one of {', '.join(SPACINGS)} "
            "(config key sampler.spacing)."
        )
    return sorted({int(t) for t in ts}, reverse=True)


def guided(
    model: Callable[..., torch.Tensor], labels: torch.Tensor, scale: float, null_label: int
) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022) as a ``model_fn`` for the samplers.

    Returns ``u + scale·(c - u)`` with ``c = model(x, t, labels)`` and ``u`` the output for the
    null label; both halves run as one batch. Guidance acts on the raw output, which is valid for
    every prediction kind since each is affine in x0 given ``x_t``. ``scale = 1`` is the
    conditional model alone (and skips the unconditional half). Given frames (``context``) stay
    in both halves: guidance is on the label only.

    Args:
        model: denoiser ``model(x, t, labels, context=None)``.
        labels: long class labels ``(B,)``.
        scale: guidance scale ``w``; 1 = no guidance, larger = stronger.
        null_label: the model's "no class" index (``num_classes``).
    """

    def model_fn(
        x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if context is None else {"context": context}
        if scale == 1:
            return model(x, t, labels, **extra)
        null = torch.full_like(labels, null_label)
        if context is not None:
            extra = {"context": torch.cat([context, context])}
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]), **extra)
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return model_fn


class Sampler(SamplingLoop):
    """The DDPM family: walks descending step indices, landing on ᾱ = 1 after the last.

    Subclasses set ``self.steps`` / ``self.spacing`` and implement :meth:`step`; the loop is
    :meth:`SamplingLoop.sample`.

    Args:
        clip_denoised: clamp each x0 estimate to ``[-1, 1]``, the data range in pixel space.
            Turn off for data that is not in [-1, 1] (latents, tests on Gaussians).
    """

    process_kind = "ddpm"
    wrong_process = (
        "runs a DDPM reverse process, but the model was trained with rectified flow: use "
        "sampler=euler or sampler=heun."
    )
    steps: int | None = None
    spacing: str = "trailing"

    def __init__(self, clip_denoised: bool = True) -> None:
        self.clip_denoised = clip_denoised

    def timesteps(self, diffusion: GaussianDiffusion) -> list[int]:
        """The descending step indices this sampler visits."""
        steps = diffusion.num_steps if self.steps is None else self.steps
        return timestep_schedule(diffusion.num_steps, steps, self.spacing)

    def intervals(self, diffusion: GaussianDiffusion) -> list[tuple[int, int | None]]:
        """``(t, t_prev)`` for every step; ``t_prev`` is None at the last (ᾱ = 1 there)."""
        timesteps = self.timesteps(diffusion)
        return list(zip(timesteps, [*timesteps[1:], None], strict=True))

    def move(
        self,
        diffusion: GaussianDiffusion,
        x: torch.Tensor,
        t: int,
        t_prev: int | None,
        model: ProcessModel,
        generator: torch.Generator | None,
        state: dict,
    ) -> torch.Tensor:
        """One model call at step ``t``, then :meth:`step` to ``t_prev``."""
        ab = diffusion.schedule.alphas_cumprod
        ab_t = float(ab[t])
        ab_prev = 1.0 if t_prev is None else float(ab[t_prev])
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = model(x, t_batch)
        return self.step(diffusion, x, t_batch, out, ab_t, ab_prev, generator, state)

    def denoise(
        self,
        diffusion: GaussianDiffusion,
        x: torch.Tensor,
        t: torch.Tensor,
        out: torch.Tensor,
        state: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` estimates from a model output; eps is recomputed after clipping and
        after the given frames' x0 is set to their clean value (``state["context"]``)."""
        x0 = diffusion.predict_x0(x, t, out)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
        context = (state or {}).get("context")
        if context is not None:
            video, given = context
            x0 = torch.where(given, video, x0)
        if self.clip_denoised or context is not None:
            return x0, diffusion.predict_eps(x, t, x0, kind="x0")
        return x0, diffusion.predict_eps(x, t, out)

    def step(
        self,
        diffusion: GaussianDiffusion,
        x: torch.Tensor,
        t: torch.Tensor,
        out: torch.Tensor,
        ab_t: float,
        ab_prev: float,
        generator: torch.Generator | None,
        state: dict,
    ) -> torch.Tensor:
        """One move from ``x_t`` (ᾱ = ``ab_t``) to the next step (ᾱ = ``ab_prev``)."""
        raise NotImplementedError


def _noise_like(
    diffusion: GaussianDiffusion, x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    # The process's own noise: with frames correlated in training, the reverse steps add
    # noise of the same covariance (the posterior's covariance is β̃ times it).
    return diffusion.noise(x.shape, generator, x.device, x.dtype)


class DDPMSampler(Sampler):
    """Ancestral sampling of Ho et al. (2020) with the "fixed small" posterior variance.

    Each step draws from ``q(x_prev | x_t, x0 = x̂0)``, the Gaussian posterior with variance
    ``β̃ = (1-ᾱ_prev)/(1-ᾱ_t)·(1 - ᾱ_t/ᾱ_prev)``. With ``steps=None`` it visits every training
    step (the original algorithm); fewer steps respace the chain as in Nichol & Dhariwal 2021.

    Args:
        steps: sampling steps; None = all ``num_steps``.
        spacing: ``leading``, ``trailing`` or ``linspace`` (only matters with ``steps``).
        clip_denoised: clamp x0 estimates to ``[-1, 1]``.
    """

    def __init__(
        self, steps: int | None = None, spacing: str = "trailing", clip_denoised: bool = True
    ) -> None:
        super().__init__(clip_denoised)
        self.steps, self.spacing = steps, spacing

    def step(self, diffusion, x, t, out, ab_t, ab_prev, generator, state):
        x0, _ = self.denoise(diffusion, x, t, out, state)
        alpha = ab_t / ab_prev  # α of the (respaced) step from t to prev
        beta = 1 - alpha
        coef_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
        coef_xt = math.sqrt(alpha) * (1 - ab_prev) / (1 - ab_t)
        mean = coef_x0 * x0 + coef_xt * x
        variance = (1 - ab_prev) / (1 - ab_t) * beta
        if variance <= 0:  # the last step: the posterior is a point mass at x̂0
            return mean
        return mean + math.sqrt(variance) * _noise_like(diffusion, x, generator)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): ``x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1-ᾱ_prev-σ²)·ε̂ + σ·z``.

    ``eta = 0`` is the deterministic sampler (the probability-flow ODE, Euler in the DDIM
    parameterisation); ``eta = 1`` matches DDPM's variance.

    Args:
        steps: sampling steps (50 is the usual trade-off).
        eta: noise scale η in ``σ = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev)``.
        spacing: ``leading``, ``trailing`` or ``linspace``.
        clip_denoised: clamp x0 estimates to ``[-1, 1]``.
    """

    def __init__(
        self,
        steps: int = 50,
        eta: float = 0.0,
        spacing: str = "trailing",
        clip_denoised: bool = True,
    ) -> None:
        super().__init__(clip_denoised)
        self.steps, self.eta, self.spacing = steps, eta, spacing

    def step(self, diffusion, x, t, out, ab_t, ab_prev, generator, state):
        x0, eps = self.denoise(diffusion, x, t, out, state)
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * _noise_like(diffusion, x, generator)
        return x_prev


class DPMSolverSampler(Sampler):
    """DPM-Solver++ (Lu et al. 2022), multistep, data prediction; order 2 is "2M".

    In ``λ = log(α/σ)`` with ``α = sqrt(ᾱ)``, ``σ = sqrt(1-ᾱ)`` and ``h = λ_prev - λ_t``:
    first order ``x_prev = (σ_prev/σ_t)·x - α_prev·(e^{-h} - 1)·D0`` (= DDIM), second order adds
    ``- ½·α_prev·(e^{-h} - 1)·D1`` with ``D1 = (x̂0_t - x̂0_last)·h/h_last``. The first step and
    the last (to σ = 0, where the update is the x0 estimate itself) are first order.

    Args:
        steps: sampling steps (15–25 usually match DDIM-50 or better).
        order: 1 or 2.
        spacing: ``leading``, ``trailing`` or ``linspace``.
        clip_denoised: clamp x0 estimates to ``[-1, 1]``.
    """

    def __init__(
        self, steps: int = 20, order: int = 2, spacing: str = "trailing", clip_denoised: bool = True
    ) -> None:
        super().__init__(clip_denoised)
        if order not in (1, 2):
            raise UserError(f"DPM-Solver++ order must be 1 or 2, got {order} (sampler.order).")
        self.steps, self.order, self.spacing = steps, order, spacing

    def step(self, diffusion, x, t, out, ab_t, ab_prev, generator, state):
        x0, _ = self.denoise(diffusion, x, t, out, state)
        if ab_prev >= 1.0:  # σ_prev = 0: the solution is the data estimate
            return x0
        alpha_t, sigma_t = math.sqrt(ab_t), math.sqrt(1 - ab_t)
        alpha_prev, sigma_prev = math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
        lam_t = math.log(alpha_t / sigma_t) if ab_t > 0 else -math.inf
        lam_prev = math.log(alpha_prev / sigma_prev)
        h = lam_prev - lam_t
        phi = math.expm1(-h)  # e^{-h} - 1, accurate for small h
        x_prev = (sigma_prev / sigma_t) * x - alpha_prev * phi * x0
        last = state.get("last")  # (x̂0, h) of the previous step
        if self.order == 2 and last is not None and math.isfinite(h):
            x0_last, h_last = last
            d1 = (x0 - x0_last) * (h / h_last)
            x_prev = x_prev - 0.5 * alpha_prev * phi * d1
        state["last"] = (x0, h)
        return x_prev
