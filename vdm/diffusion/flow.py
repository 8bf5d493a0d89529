"""Rectified flow (flow matching with straight paths), beside :class:`GaussianDiffusion`.

Continuous time ``t ∈ [0, 1]``, 1 = pure noise:

- forward path ``x_t = (1 − t)·x0 + t·ε``;
- the denoiser predicts the velocity ``v = dx_t/dt = ε − x0`` (diffusers' convention, as in
  SD3 and Open-Sora; sampling integrates ``dx/dt = v`` from t = 1 down to 0);
- ``x0 = x_t − t·v`` and ``ε = x_t + (1 − t)·v``.

The denoisers see ``t · 1000`` (:attr:`FlowMatching.num_steps`), so one sinusoidal time
embedding serves both processes: a DDPM step index and a flow time land on the same scale.
"""

from __future__ import annotations

import math

import torch

from vdm.diffusion.objective import TrainingObjective
from vdm.diffusion.process import broadcast_like
from vdm.errors import UserError

TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "mode")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``shift·t / (1 + (shift − 1)·t)``: more time at high noise for ``shift > 1`` (SD3's
    resolution-dependent shift, diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...)``)."""
    return shift * t / (1 + (shift - 1) * t)


def shift_for(frames: int, height: int, width: int, base_pixels: int = 32 * 32 * 8) -> float:
    """The shift for clips of ``frames × height × width``: ``sqrt(pixels / base_pixels)``.

    Doubling the pixels of a clip doubles the evidence a given noise level leaves about the
    image (SD3 §5.3.2: the SNR of a mean over n pixels grows n-fold), so keeping the same
    difficulty needs noise levels ``sqrt(n)`` times higher in odds: exactly ``shift = sqrt(n)``
    in ``t/(1 − t)``. The base is vdm's default clip (8 frames of 32²), trained with shift 1;
    16 × 64² gives 2.83, Open-Sora's 3 at similar sizes. In latent space count the latents'
    positions (``T' × H' × W'`` of the autoencoder's latent shape), not the pixels: a 16 × 64²
    clip through vdm's VAE (spatial factor 4) is 16 × 16², shift 0.71.
    """
    return math.sqrt(frames * height * width / base_pixels)


class FlowMatching(TrainingObjective):
    """Rectified-flow training: the same role and interface as :class:`GaussianDiffusion`.

    :meth:`~TrainingObjective.training_loss` is the MSE between the predicted and the true
    velocity, unweighted; ``t`` there is a float time ``(B,)`` in [0, 1], shown to the model as
    :meth:`model_time` (given frames at time 0).

    Example:
        >>> flow = FlowMatching(timestep_sampling="logit_normal", shift=1.0)
        >>> loss, per_sample, t = flow.training_loss(model, video, labels=labels)

    Args:
        timestep_sampling: how training draws ``t``: ``uniform``, ``logit_normal``
            (``sigmoid(N(logit_mean, logit_std²))``, SD3's best, rf/lognorm(0, 1)) or ``mode``
            (SD3's mode sampling with ``mode_scale``).
        logit_mean, logit_std: of ``logit_normal``.
        mode_scale: ``s`` of ``mode`` sampling (SD3 eq. 20; 1.29 in their study).
        shift: applied to every training ``t`` and to the samplers' time grid;
            :func:`shift_for` gives a rule from the clip size (1 = none).
    """

    kind = "flow"
    num_steps = 1000  # the denoiser sees t · 1000; also the unit of integer steps from callers

    def __init__(
        self,
        timestep_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        shift: float = 1.0,
    ) -> None:
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise UserError(
                f"diffusion.timestep_sampling={timestep_sampling!r}: use one of "
                f"{', '.join(TIMESTEP_SAMPLINGS)}."
            )
        if shift <= 0 or logit_std <= 0:
            raise UserError(
                f"diffusion.shift={shift}, diffusion.logit_std={logit_std}: both must be > 0."
            )
        self.timestep_sampling = timestep_sampling
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale
        self.shift = shift

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is given for time ``t``: ``t · 1000`` (float)."""
        return t.float() * self.num_steps

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator=None
    ) -> torch.Tensor:
        """Training times ``(batch_size,)`` in ``(0, 1)``, drawn by ``timestep_sampling`` and
        then shifted."""
        if self.timestep_sampling == "logit_normal":
            z = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(self.logit_mean + self.logit_std * z)
        else:
            u = torch.rand(batch_size, generator=generator, device=device)
            t = u
            if self.timestep_sampling == "mode":
                t = 1 - u - self.mode_scale * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
        return shift_time(t, self.shift)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 − t)·x0 + t·ε`` for times ``t (B,)`` in [0, 1]."""
        t = broadcast_like(t.to(x0.dtype), x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity ``ε − x0`` (the same at every t)."""
        return noise - x0

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x0 = x_t − t·v`` for times ``t (B,)``."""
        return x_t - broadcast_like(t.to(x_t.dtype), x_t) * v
