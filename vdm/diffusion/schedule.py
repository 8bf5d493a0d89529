"""Noise schedules: the β_t table and everything derived from it.

Index ``t = 0`` is the least noisy step and ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε`` with
``ᾱ_t = ∏_{s≤t}(1-β_s)``, exactly as in DDPM (Ho et al. 2020) and diffusers' schedulers, so
tables can be compared one to one.
"""

from __future__ import annotations

import math

import torch

from vdm.errors import UserError

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "sigmoid")

# Nichol & Dhariwal (2021): the offset keeps β_0 from being vanishingly small, and β is clipped
# below 1 so that the last steps do not destroy the signal in one jump.
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


def cosine_alpha_bar(u: torch.Tensor, s: float = COSINE_OFFSET) -> torch.Tensor:
    """The unnormalised cosine ᾱ curve ``f(u) = cos²((u + s)/(1 + s) · π/2)`` for u in [0, 1]."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(
    kind: str, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Return the float64 β table of a named schedule.

    Args:
        kind: ``linear`` (DDPM), ``scaled_linear`` (linear in sqrt β, Stable Diffusion),
            ``cosine`` (Nichol & Dhariwal; ignores ``beta_start``/``beta_end``) or ``sigmoid``
            (sigmoid of linspace(-6, 6), scaled into ``[beta_start, beta_end]``).
        num_steps: number of diffusion steps T.
        beta_start: β at t = 0 for the linear-like kinds.
        beta_end: β at t = T - 1 for the linear-like kinds.

    Returns:
        ``(num_steps,)`` float64 tensor.
    """
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    if kind == "cosine":
        u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = cosine_alpha_bar(u)
        return (1 - f[1:] / f[:-1]).clamp(max=COSINE_MAX_BETA)
    if kind == "sigmoid":
        ramp = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64))
        return ramp * (beta_end - beta_start) + beta_start
    raise UserError(
        f"Unknown noise schedule kind {kind!r}: use one of {', '.join(SCHEDULE_KINDS)} "
        "(config key schedule.kind)."
    )


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale β so the last step has SNR 0 and the first keeps its ᾱ (Lin et al. 2023, Alg. 1).

    sqrt(ᾱ) is shifted so its last value is 0 and scaled so its first value is unchanged; the
    last β becomes exactly 1, so ``x_{T-1}`` is pure noise, as sampling assumes.
    """
    sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_cumprod = sqrt_ab**2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


def shift_snr(betas: torch.Tensor, shift: float) -> torch.Tensor:
    """Divide the SNR of every step by ``shift²`` (Hoogeboom et al. 2023, "simple diffusion").

    Redundant signals (large frames, many frames of one object, flat colours) survive noise
    that would hide a single pixel, so the coarse decisions of sampling happen at very low SNR;
    ``shift > 1`` moves more of the steps there. ``ᾱ' = SNR'/(1 + SNR')`` with
    ``SNR' = SNR/shift²``, and β is rebuilt from ``ᾱ'``.
    """
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    shifted = snr / (snr + shift**2)
    return 1 - shifted / torch.cat([shifted.new_ones(1), shifted[:-1]])


class NoiseSchedule:
    """A discrete noise schedule: β_t, ᾱ_t and the signal-to-noise ratio.

    Example:
        >>> schedule = NoiseSchedule("cosine", num_steps=1000)
        >>> schedule.alphas_cumprod.shape
        torch.Size([1000])

    Args:
        kind: one of ``linear``, ``scaled_linear``, ``cosine``, ``sigmoid``.
        num_steps: number of training steps T; ``t`` indexes ``[0, T)``.
        beta_start: first β of the linear-like kinds (DDPM: 1e-4).
        beta_end: last β of the linear-like kinds (DDPM: 0.02).
        zero_terminal_snr: rescale so that ``ᾱ_{T-1} = 0`` (Lin et al. 2023). Turn on with
            ``v`` or ``x0`` prediction to stop the model from seeing signal at the last step
            that sampling never gives it; ``eps`` prediction cannot work at SNR 0.
        snr_shift: divide every step's SNR by ``snr_shift²`` (:func:`shift_snr`); 1 keeps the
            named schedule, > 1 makes it noisier. Applied before ``zero_terminal_snr``, as
            CogVideoX's scheduler applies its ``snr_shift_scale`` s, which is ``snr_shift²``
            (``ᾱ' = ᾱ/(s + (1-s)·ᾱ)``: CogVideoX's 3.0 is ``snr_shift = sqrt(3)``).
    """

    def __init__(
        self,
        kind: str = "linear",
        num_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        zero_terminal_snr: bool = False,
        snr_shift: float = 1.0,
    ) -> None:
        if num_steps < 1:
            raise UserError(f"num_steps must be >= 1, got {num_steps} (schedule.num_steps).")
        if not 0 < beta_start <= beta_end < 1:
            raise UserError(
                f"Need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end} "
                "(schedule.beta_start / schedule.beta_end)."
            )
        if snr_shift <= 0:
            raise UserError(f"snr_shift must be > 0, got {snr_shift} (schedule.snr_shift).")
        self.kind = kind
        self.num_steps = num_steps
        self.zero_terminal_snr = zero_terminal_snr
        self.snr_shift = snr_shift
        betas = make_betas(kind, num_steps, beta_start, beta_end)
        if snr_shift != 1:
            betas = shift_snr(betas, snr_shift)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas: torch.Tensor = betas
        self.alphas_cumprod: torch.Tensor = torch.cumprod(1 - betas, dim=0)

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """Signal-to-noise ratio ``ᾱ_t / (1 - ᾱ_t)`` (float64) at step indices ``t``."""
        ab = self.alphas_cumprod[torch.as_tensor(t, device="cpu")]
        return ab / (1 - ab)

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(kind={self.kind!r}, num_steps={self.num_steps}, "
            f"zero_terminal_snr={self.zero_terminal_snr}, snr_shift={self.snr_shift})"
        )
