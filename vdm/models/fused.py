"""Fused ops that keep fewer activations for the backward pass than the PyTorch ops they replace.

Training memory of the denoisers is mostly activations saved for backward. Two chains of the
transformer save tensors that backward can rebuild from cheaper ones:

- ``LayerNorm → x·(1 + scale) + shift`` saves the normalised tensor for the scale's gradient;
  :func:`norm_modulate` keeps only its input and the per-token statistics and rebuilds it.
- ``gate · Linear(GELU(x))`` saves the GELU output for the weight gradient and the linear
  output for the gate's gradient; :func:`gated_linear` keeps only ``x`` (which the chain before
  it saves anyway), recomputes the elementwise GELU, and gets the gate's gradient from the
  per-sample weight-gradient product, so no matmul is recomputed.

Both follow the dtypes of the ops they replace under autocast, and their gradients are tested
against the unfused chains (``tests/test_fused.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from vdm.errors import UserError


class _NormModulate(Function):
    @staticmethod
    def forward(ctx, x, shift, scale, eps):
        normed, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, eps)
        ctx.save_for_backward(x, mean, rstd, shift, scale)
        return torch.addcmul(shift, normed, 1 + scale)

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, shift, scale = ctx.saved_tensors
        normed = ((x - mean) * rstd).to(grad.dtype)  # elementwise: cheaper to redo than keep
        grad_shift = grad.sum_to_size(shift.shape).to(shift.dtype)
        grad_scale = (grad * normed).sum_to_size(scale.shape).to(scale.dtype)
        grad_normed = (grad * (1 + scale)).to(x.dtype)
        grad_x = torch.ops.aten.native_layer_norm_backward(
            grad_normed, x, x.shape[-1:], mean, rstd, None, None, [True, False, False]
        )[0]
        return grad_x, grad_shift, grad_scale, None


def norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``LayerNorm(x)·(1 + scale) + shift`` (no affine), saving ``x`` instead of the normed copy.

    Args:
        x: ``(..., D)``.
        shift: broadcastable to ``x``.
        scale: broadcastable to ``x``.
        eps: LayerNorm epsilon.

    Returns:
        A tensor of ``x``'s shape, in the dtype ``addcmul`` gives its inputs.
    """
    return _NormModulate.apply(x, shift, scale, eps)


class _GatedLinear(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gate, gelu):
        hidden = F.gelu(x, approximate="tanh") if gelu else x
        out = F.linear(hidden, weight, bias)  # autocast casts here, as for nn.Linear
        ctx.gelu, ctx.compute_dtype = gelu, out.dtype
        ctx.save_for_backward(x, weight, bias, gate)
        return out * gate

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, gate = ctx.saved_tensors
        dtype, batch = ctx.compute_dtype, x.shape[0]
        hidden = F.gelu(x, approximate="tanh") if ctx.gelu else x
        hidden = hidden.to(dtype).reshape(batch, -1, x.shape[-1])  # (B, L, K)
        w = weight.to(dtype)
        grad = grad.to(dtype).reshape(batch, -1, weight.shape[0])  # (B, L, D)
        gate_row = gate.to(dtype).reshape(batch, 1, -1)  # (B, 1, D)
        grad_out = grad * gate_row  # gradient of the linear's output
        grad_hidden = (grad_out @ w).reshape(x.shape)
        grad_x = (
            torch.ops.aten.gelu_backward(grad_hidden, x, approximate="tanh")
            if ctx.gelu
            else grad_hidden
        )
        # Per-sample Σ_tokens grad ⊗ hidden (B, D, K): the weight gradient is its gate-weighted
        # sum over samples, and the gate gradient its contraction with the weight, so the
        # linear's output never has to be kept or recomputed.
        per_sample = torch.bmm(grad.transpose(1, 2), hidden)
        grad_weight = (per_sample * gate_row.transpose(1, 2)).sum(0)
        grad_gate = (per_sample * w).sum(-1)
        grad_bias = None
        if bias is not None:
            token_sum = grad.sum(1)  # (B, D)
            grad_gate = grad_gate + token_sum * bias.to(dtype)
            grad_bias = (token_sum * gate_row[:, 0]).sum(0).to(bias.dtype)
        return (
            grad_x.to(x.dtype),
            grad_weight.to(weight.dtype),
            grad_bias,
            grad_gate.reshape(gate.shape).to(gate.dtype),
            None,
        )


def gated_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gate: torch.Tensor,
    gelu: bool = False,
) -> torch.Tensor:
    """``gate · Linear(GELU(x))`` (GELU optional, tanh approximation), saving only ``x``.

    Args:
        x: ``(B, ..., K)``.
        weight: ``(D, K)``, as ``nn.Linear.weight``.
        bias: ``(D,)`` or None.
        gate: one gate per sample and output channel, shaped ``(B, 1, ..., 1, D)``, or one per
            sample, frame and channel, ``(B, T, 1, ..., D)`` for ``x (B, T, ..., K)``.
        gelu: apply GELU to ``x`` first (the MLP's second layer).

    Returns:
        ``(B, ..., D)``.
    """
    per_frame = (
        gate.dim() == x.dim() > 3
        and gate.shape[1] == x.shape[1] > 1
        and all(size == 1 for size in gate.shape[2:-1])
    )
    if per_frame:
        # Per-frame gates: fold the frames into the batch, where gates are per sample.
        out = gated_linear(x.flatten(0, 1), weight, bias, gate.flatten(0, 1), gelu)
        return out.unflatten(0, x.shape[:2])
    if (
        gate.shape[0] != x.shape[0]
        or gate.shape[-1] != weight.shape[0]
        or gate[0].numel() != (weight.shape[0])
    ):
        raise UserError(
            f"gated_linear needs a gate of shape (B, 1, ..., D) = ({x.shape[0]}, ..., "
            f"{weight.shape[0]}), got {tuple(gate.shape)}."
        )
    return _GatedLinear.apply(x, weight, bias, gate, gelu)
