"""The training objective shared by the Gaussian process and rectified flow.

Both train a denoiser the same way: draw a time ``t`` and noise ε, noise ``x0`` to ``x_t``, and
regress the model's output on the process's target, with given frames (``context``) entering
clean and left out of the loss. They differ in two places only, the hooks of
:class:`TrainingObjective`: the time the model is shown (:meth:`~TrainingObjective.model_time`)
and the per-sample loss weights (:meth:`~TrainingObjective.loss_weights`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vdm.errors import UserError


class TrainingObjective:
    """The denoising loss of a noising process; a subclass supplies the process.

    A subclass implements the process (:meth:`sample_timesteps`, :meth:`q_sample`,
    :meth:`target`; :meth:`noise` if not standard normal) and may override the two hooks:
    :meth:`model_time` (identity here) and :meth:`loss_weights` (none here).
    :meth:`training_loss` is written once for every process.

    Attributes:
        kind: which family of samplers runs the process (``ddpm`` or ``flow``).
    """

    kind: str

    # the process ---------------------------------------------------------------------------

    def sample_timesteps(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Training times ``(batch_size,)`` in the process's own units."""
        raise NotImplementedError

    def noise(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Noise ε of ``shape``, as training and every sampler draw it: standard normal here."""
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` from clean data ``x0 (B, ...)``, times ``t (B,)`` and ``noise``."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output for this ``(x0, noise, t)``."""
        raise NotImplementedError

    # the hooks -----------------------------------------------------------------------------

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is given for times ``t`` (``(B,)`` or per frame ``(B, T)``);
        here ``t`` itself."""
        return t

    def loss_weights(self, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor | None:
        """Per-sample weights ``(B,)`` on the MSE of the target, or None for none (here).

        Args:
            t: the times ``(B,)`` of the batch.
            context: the bool ``(B, T)`` given frames, or None.
        """
        return None

    # the loss ------------------------------------------------------------------------------

    def training_loss(
        self,
        model_fn: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        context: torch.Tensor | None = None,
        **cond,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noise ``x0`` at random times, run the denoiser and return the weighted MSE.

        Args:
            model_fn: ``model_fn(x_t, model_time(t), **cond) -> output`` of the target's kind;
                with ``context`` it is called as
                ``model_fn(x_in, model_time(t_frames), context=context, **cond)``.
            x0: clean video ``(B, C, T, H, W)`` in ``[-1, 1]``.
            t: times ``(B,)`` (long steps for DDPM, floats in [0, 1] for flow); drawn by
                :meth:`sample_timesteps` when None (fix them for validation).
            noise: ε shaped like ``x0``; drawn when None, after ``t`` (fix it for validation).
            loss_mask: optional ``(B, T)`` of 0/1: frames with 0 are left out of the loss.
            generator: RNG for ``t`` and ``noise`` when they are drawn.
            context: optional bool ``(B, T)``, True for given frames: they enter clean
                (``x_in = where(context, x0, x_t)``), the model sees them at time 0 in the
                per-frame times ``t_frames (B, T)``, and they are left out of the loss.
            **cond: passed to ``model_fn`` (e.g. ``labels``).

        Returns:
            ``(loss, per_sample_loss, t)``: the scalar mean loss, the weighted loss of each
            sample ``(B,)`` (float32; its mean is ``loss``; for logging per timestep), and the
            times used.
        """
        batch = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(batch, x0.device, generator)
        if noise is None:
            noise = self.noise(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        if context is None:
            out = model_fn(x_t, self.model_time(t), **cond)
        else:
            given = context.bool()
            x_in = torch.where(given[:, None, :, None, None], x0, x_t)
            # An int 0 keeps t's dtype: a long step for DDPM, a float time for flow.
            t_frames = torch.where(given, 0, t[:, None])
            out = model_fn(x_in, self.model_time(t_frames), context=given, **cond)
            generated = (~given).to(x0.dtype)
            loss_mask = generated if loss_mask is None else loss_mask * generated
        per_sample = per_sample_mse(out, self.target(x0, noise, t), loss_mask)
        weights = self.loss_weights(t, context)
        if weights is not None:
            per_sample = per_sample * weights
        return per_sample.mean(), per_sample, t


def per_sample_mse(
    out: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The MSE of each sample ``(B,)``, in float32 whatever precision the model ran in, over
    the frames where ``loss_mask (B, T)`` is 1 (all frames when None)."""
    if out.shape != target.shape:
        raise UserError(
            f"Denoiser output shape {tuple(out.shape)} differs from its input "
            f"{tuple(target.shape)}: check model.out_channels equals data channels."
        )
    sq_err = F.mse_loss(out.float(), target.float(), reduction="none")
    if loss_mask is None:
        return sq_err.flatten(1).mean(dim=1)
    return masked_mean_per_sample(sq_err, loss_mask)


def masked_mean_per_sample(sq_err: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``sq_err (B, C, T, H, W)`` over the frames where ``loss_mask (B, T)`` is 1.

    A sample whose mask is all zero contributes 0 (not NaN).
    """
    if sq_err.dim() != 5 or loss_mask.shape != (sq_err.shape[0], sq_err.shape[2]):
        raise UserError(
            f"loss_mask must be (B, T) = {(sq_err.shape[0], sq_err.shape[2])} for video "
            f"(B, C, T, H, W); got {tuple(loss_mask.shape)}."
        )
    mask = loss_mask.to(sq_err.dtype)[:, None, :, None, None]
    per_frame_elems = sq_err.shape[1] * sq_err.shape[3] * sq_err.shape[4]
    total = (sq_err * mask).flatten(1).sum(dim=1)
    count = mask.flatten(1).sum(dim=1) * per_frame_elems
    return total / count.clamp(min=1)
