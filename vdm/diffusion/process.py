"""The Gaussian diffusion process: forward noising, training targets and their conversions.

With ``a = sqrt(ᾱ_t)`` and ``σ = sqrt(1 - ᾱ_t)`` (so ``a² + σ² = 1``):

- forward process ``x_t = a·x0 + σ·ε``;
- the three targets a denoiser may predict: ``eps = ε``, ``x0``, and
  ``v = a·ε - σ·x0`` (Salimans & Ho 2022);
- each one, together with ``x_t``, determines the other two.

ε is standard normal per element. For video it may be correlated across frames (the "mixed"
noise prior of Ge et al. 2023, PYoCo): every frame's noise shares one component, so the frames
of a clip start the reverse process from similar noise. All formulas above hold unchanged for
any fixed noise covariance; only the draws of ε change (:meth:`GaussianDiffusion.noise`, used
for training and by every sampler).
"""

from __future__ import annotations

import math

import torch

from vdm.diffusion.objective import TrainingObjective
from vdm.diffusion.schedule import NoiseSchedule
from vdm.errors import UserError

PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("uniform", "min_snr", "min_snr_plus_one")


def broadcast_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample values ``(B,)`` to ``(B, 1, ..., 1)`` so they broadcast over ``x``."""
    return values.reshape(values.shape[0], *([1] * (x.dim() - 1)))


class GaussianDiffusion(TrainingObjective):
    """DDPM forward process, training targets and loss weighting over a :class:`NoiseSchedule`.

    Knows nothing of networks: a denoiser enters only as ``model_fn(x_t, t, **cond)``, with
    ``t`` the long step itself. :meth:`~TrainingObjective.training_loss` comes from
    :class:`TrainingObjective`; this class weighs it by :meth:`loss_weights`.

    Example:
        >>> diffusion = GaussianDiffusion(NoiseSchedule("cosine"), prediction="v")
        >>> loss, per_sample, t = diffusion.training_loss(model, video, labels=labels)

    Args:
        schedule: the noise schedule.
        prediction: what the denoiser outputs: ``eps`` (DDPM), ``x0``, or ``v`` (more stable at
            low SNR; needed with ``zero_terminal_snr``).
        loss_weighting: ``uniform`` (plain MSE on the target), ``min_snr`` (Hang et al. 2023:
            per-step weights equivalent to ``min(SNR, γ)·|x̂0 - x0|²`` for every target, which
            speeds up convergence by damping the easy low-noise steps) or ``min_snr_plus_one``
            (``min(SNR + 1, γ)·|x̂0 - x0|²``, the v-prediction reading of min-SNR in kohya's
            sd-scripts: the same as ``min_snr`` at low noise, but the x0 error keeps weight
            ≥ 1 at the highest noise levels, where ``min_snr`` gives them ~SNR ≈ 0. Those are
            the steps where a video's layout is decided; docs/experiments.md has what it does
            to the shapes run. v or x0 only: as an eps weight it is unbounded as SNR → 0).
        min_snr_gamma: γ of ``min_snr`` and ``min_snr_plus_one``; 5 is the paper's value.
        context_loss_weighting: the weighting of clips with given frames (``context``); None =
            ``loss_weighting``. Given frames make the noisiest steps informative (they are
            where a generated frame must come from its neighbours), steps that ``min_snr``
            hardly weighs; ``min_snr_plus_one`` keeps weight 1 there.
        frame_noise_correlation: ρ in ``[0, 1)``, the correlation between the noise of any two
            frames of a video (0 = independent, as in image diffusion). A model must be sampled
            with the ρ it was trained with; it is part of the process, like the schedule.
    """

    kind = "ddpm"  # beside FlowMatching's "flow": which samplers fit

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        frame_noise_correlation: float = 0.0,
        context_loss_weighting: str | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise UserError(
                f"Unknown prediction {prediction!r}: use one of {', '.join(PREDICTIONS)} "
                "(config key diffusion.prediction)."
            )
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise UserError(
                f"Unknown loss weighting {loss_weighting!r}: use one of "
                f"{', '.join(LOSS_WEIGHTINGS)} (config key diffusion.loss_weighting)."
            )
        if prediction == "eps" and schedule.alphas_cumprod[-1] == 0:
            raise UserError(
                "eps prediction cannot recover x0 at SNR 0: with schedule.zero_terminal_snr=true "
                "set diffusion.prediction=v (or x0)."
            )
        if loss_weighting == "min_snr_plus_one" and prediction == "eps":
            raise UserError(
                "loss_weighting=min_snr_plus_one weighs the x0 error by at least 1 at every noise "
                "level, an unbounded eps weight as SNR -> 0: set diffusion.prediction=v (or x0), "
                "or diffusion.loss_weighting=min_snr."
            )
        context_loss_weighting = context_loss_weighting or loss_weighting
        if context_loss_weighting not in LOSS_WEIGHTINGS:
            raise UserError(
                f"Unknown loss weighting {context_loss_weighting!r} for clips with given frames: "
                f"use one of {', '.join(LOSS_WEIGHTINGS)} (config key context.loss_weighting)."
            )
        if context_loss_weighting == "min_snr_plus_one" and prediction == "eps":
            raise UserError(
                "context.loss_weighting=min_snr_plus_one needs diffusion.prediction=v (or x0): as "
                "an eps weight it is unbounded as SNR -> 0; or set context.loss_weighting=min_snr."
            )
        if min_snr_gamma <= 0:
            raise UserError(f"min_snr_gamma must be > 0, got {min_snr_gamma}.")
        if not 0 <= frame_noise_correlation < 1:
            raise UserError(
                f"frame_noise_correlation must be in [0, 1), got {frame_noise_correlation} "
                "(config key diffusion.frame_noise_correlation)."
            )
        self.schedule = schedule
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.frame_noise_correlation = frame_noise_correlation
        self.context_loss_weighting = context_loss_weighting
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    @property
    def num_steps(self) -> int:
        """Number of diffusion steps T."""
        return self.schedule.num_steps

    def _table(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Table ``name`` (``sqrt_ab``, ``sqrt_one_minus_ab``, ``snr``) at steps ``t``."""
        tables = self._tables.get(t.device)
        if tables is None:
            ab = self.schedule.alphas_cumprod
            # Computed in float64 once; MPS has no float64, so those devices get float32.
            dtype = torch.float32 if t.device.type == "mps" else torch.float64
            tables = {
                "sqrt_ab": ab.sqrt(),
                "sqrt_one_minus_ab": (1 - ab).sqrt(),
                "snr": ab / (1 - ab),
            }
            tables = {k: v.to(device=t.device, dtype=dtype) for k, v in tables.items()}
            self._tables[t.device] = tables
        return tables[name][t]

    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at steps ``t``, shaped to broadcast over ``x`` and in its dtype."""
        return broadcast_like(self._table(name, t), x).to(x.dtype)

    # forward process -------------------------------------------------------------------------

    def noise(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw ε of ``shape``: unit variance per element, frames correlated by ρ.

        With ``ρ = frame_noise_correlation > 0`` the shape must be video ``(B, C, T, H, W)`` and
        ``ε = sqrt(1-ρ)·z + sqrt(ρ)·z_shared``, where ``z`` is drawn per frame and ``z_shared``
        once per video (broadcast over T). With ρ = 0 it is exactly ``torch.randn`` from
        ``generator``: the same numbers as before the option existed.
        """
        eps = super().noise(shape, generator, device, dtype)
        rho = self.frame_noise_correlation
        if rho == 0:
            return eps
        if len(shape) != 5:
            raise UserError(
                f"frame_noise_correlation={rho} needs video-shaped noise (B, C, T, H, W); got "
                f"shape {tuple(shape)}."
            )
        b, c, _, h, w = shape
        shared = torch.randn((b, c, 1, h, w), generator=generator, device=device, dtype=dtype)
        return math.sqrt(1 - rho) * eps + math.sqrt(rho) * shared

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x0)`` as ``sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise``.

        Args:
            x0: clean data ``(B, ...)``, e.g. video ``(B, C, T, H, W)``.
            t: long step indices ``(B,)`` in ``[0, num_steps)``.
            noise: standard normal noise shaped like ``x0``.
        """
        return self._coef("sqrt_ab", t, x0) * x0 + self._coef("sqrt_one_minus_ab", t, x0) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output for this ``(x0, noise, t)``, by ``prediction``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self._coef("sqrt_ab", t, x0) * noise - self._coef("sqrt_one_minus_ab", t, x0) * x0

    # conversions between prediction kinds ----------------------------------------------------

    def predict_x0(
        self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor, kind: str | None = None
    ) -> torch.Tensor:
        """The clean-data estimate implied by a model output ``out`` of kind ``kind``.

        Args:
            x_t: noisy input ``(B, ...)``.
            t: long step indices ``(B,)``.
            out: model output, same shape as ``x_t``.
            kind: ``eps``, ``x0`` or ``v``; defaults to this diffusion's ``prediction``.
        """
        kind = kind or self.prediction
        a, s = self._coef("sqrt_ab", t, x_t), self._coef("sqrt_one_minus_ab", t, x_t)
        if kind == "eps":
            return (x_t - s * out) / a
        if kind == "x0":
            return out
        return a * x_t - s * out

    def predict_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor, kind: str | None = None
    ) -> torch.Tensor:
        """The noise estimate implied by a model output ``out`` of kind ``kind``."""
        kind = kind or self.prediction
        a, s = self._coef("sqrt_ab", t, x_t), self._coef("sqrt_one_minus_ab", t, x_t)
        if kind == "eps":
            return out
        if kind == "x0":
            return (x_t - a * out) / s
        return s * x_t + a * out

    def predict_v(
        self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor, kind: str | None = None
    ) -> torch.Tensor:
        """The velocity estimate implied by a model output ``out`` of kind ``kind``."""
        kind = kind or self.prediction
        if kind == "v":
            return out
        a, s = self._coef("sqrt_ab", t, x_t), self._coef("sqrt_one_minus_ab", t, x_t)
        x0 = self.predict_x0(x_t, t, out, kind)
        eps = self.predict_eps(x_t, t, out, kind)
        return a * eps - s * x0

    # training ---------------------------------------------------------------------------------

    def loss_weight(self, t: torch.Tensor, weighting: str | None = None) -> torch.Tensor:
        """Per-sample loss weights ``(B,)`` (float32) on the MSE of this diffusion's target.

        ``min_snr`` weights are relative to the target, so that every prediction kind weighs
        the x0 error by ``min(SNR, γ)``: eps ``min(SNR, γ)/SNR``, x0 ``min(SNR, γ)``,
        v ``min(SNR, γ)/(SNR + 1)``. ``min_snr_plus_one`` weighs it by ``min(SNR + 1, γ)``:
        x0 ``min(SNR + 1, γ)``, v ``min(1, γ/(SNR + 1))``.

        Args:
            t: step indices ``(B,)``.
            weighting: one of the loss weightings; None = this diffusion's ``loss_weighting``.
        """
        weighting = weighting or self.loss_weighting
        if weighting == "uniform":
            return torch.ones(t.shape, device=t.device)
        snr = self._table("snr", t)
        gamma = self.min_snr_gamma
        if weighting == "min_snr_plus_one":
            # x0 weight min(SNR + 1, γ): v weight min(1, γ/(SNR + 1)), x0 weight itself.
            x0_weight = (snr + 1).clamp(max=gamma)
            return (x0_weight if self.prediction == "x0" else x0_weight / (snr + 1)).float()
        if self.prediction == "eps":
            # min(SNR, γ)/SNR written as min(1, γ/SNR): finite (=1) at SNR = 0.
            weight = (gamma / snr).clamp(max=1.0)
        elif self.prediction == "x0":
            weight = snr.clamp(max=gamma)
        else:
            weight = snr.clamp(max=gamma) / (snr + 1)
        return weight.float()

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator=None
    ) -> torch.Tensor:
        """Uniform long step indices ``(batch_size,)`` in ``[0, num_steps)``."""
        return torch.randint(0, self.num_steps, (batch_size,), device=device, generator=generator)

    def loss_weights(self, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The per-sample weights ``(B,)`` that :meth:`training_loss` applies:
        :meth:`loss_weight` by ``loss_weighting``, and by ``context_loss_weighting`` for the
        samples with a given frame in ``context (B, T)``."""
        weight = self.loss_weight(t)
        if context is not None and self.context_loss_weighting != self.loss_weighting:
            with_context = context.bool().any(dim=1)
            weight = torch.where(
                with_context, self.loss_weight(t, self.context_loss_weighting), weight
            )
        return weight
