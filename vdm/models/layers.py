"""Building blocks shared by the denoisers: embeddings, attention, rotary positions, modulation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vdm.errors import UserError
from vdm.models.fused import gated_linear


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of (possibly fractional) steps ``t (B,)``.

    Half the channels are ``cos(t·f_i)``, half ``sin(t·f_i)``, with frequencies ``f_i`` spaced
    geometrically from 1 down to ``1/max_period`` (Vaswani et al. 2017; DDPM).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Steps ``(B,)`` → ``(B, dim)``: sinusoidal features followed by a two-layer MLP."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim))


class LabelEmbedder(nn.Module):
    """Class labels ``(B,)`` → ``(B, dim)``, with one extra row for the null label.

    The null label is index ``num_classes``: it is what classifier-free guidance feeds for the
    unconditional half, and what ``labels=None`` means.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(
        self, labels: torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif labels.min() < 0 or labels.max() > self.num_classes:
            raise UserError(
                f"Labels must be in [0, {self.num_classes}] ({self.num_classes} = null label); "
                f"got values in [{labels.min().item()}, {labels.max().item()}]: check "
                "model.num_classes against the data's number of classes."
            )
        return self.table(labels)


class ConditionEmbedder(nn.Module):
    """Time (+ label) (+ pooled text) embedding ``(B, dim)`` that conditions every block.

    With ``text_dim > 0`` the caption's pooled embedding enters through a zero-initialised
    linear layer, so a fresh model ignores it.
    """

    def __init__(self, dim: int, num_classes: int = 0, text_dim: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.time = TimestepEmbedder(dim)
        self.label = LabelEmbedder(num_classes, dim) if num_classes > 0 else None
        self.text = zero_module(nn.Linear(text_dim, dim)) if text_dim > 0 else None

    def forward(
        self, t: torch.Tensor, labels: torch.Tensor | None, pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Steps ``t (N,)``, labels ``(N,)`` and pooled text ``(N, text_dim)`` → ``(N, dim)``."""
        emb = self.time(t)
        if self.label is not None:
            emb = emb + self.label(labels, t.shape[0], t.device)
        elif labels is not None:
            raise UserError(
                "Labels were passed to an unconditional denoiser (model.num_classes=0): set "
                "model.num_classes to the data's number of classes, or pass labels=None."
            )
        if self.text is not None and pooled is not None:
            emb = emb + self.text(pooled.to(emb.dtype))
        return emb


class CrossAttention(nn.Module):
    """Attention from video tokens to caption tokens, padded caption tokens masked out.

    The output projection starts at zero, so a fresh branch adds nothing: a model with text
    starts as the model without it.

    Args:
        dim: channels of the video tokens.
        text_dim: width of the caption tokens.
        heads: attention heads; ``dim`` must divide evenly.
        qk_norm: RMS-normalise queries and keys per head.
    """

    def __init__(self, dim: int, text_dim: int, heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise UserError(f"Attention dim {dim} is not divisible by heads {heads}.")
        self.heads, self.head_dim = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(text_dim, 2 * dim)
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.out = zero_module(nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x + out(attention(norm(x), tokens))``.

        Args:
            x: video tokens ``(B, N, dim)``: every query of a clip attends to its caption.
            tokens: caption tokens ``(B, L, text_dim)``.
            mask: bool ``(B, L)``, True for real tokens. A caption with none (not produced by
                vdm's encoders, which always keep one) attends to every position instead of
                giving NaN.
        """
        b, n, _ = x.shape
        q = self.q_norm(self.q(self.norm(x)).unflatten(-1, (self.heads, self.head_dim)))
        k, v = self.kv(tokens.to(x.dtype)).unflatten(-1, (2, self.heads, self.head_dim)).unbind(2)
        k = self.k_norm(k)
        mask = mask | ~mask.any(1, keepdim=True)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None, None]
        )
        return x + self.out(out.transpose(1, 2).reshape(b, n, -1))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) over a sequence axis of any length.

    Rotating query and key pairs by ``position·θ_i`` makes their dot product depend only on the
    relative position, so a model trained on 16 frames runs on 8 or 24.
    """

    def __init__(self, head_dim: int, base: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise UserError(f"Rotary embedding needs an even head dim, got {head_dim}.")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and ``sin`` tables ``(length, head_dim)`` for positions ``0..length-1``."""
        pos = torch.arange(length, device=device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq.to(device)[None]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (..., L, head_dim)`` by the tables of :meth:`RotaryEmbedding.cos_sin`."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class RMSNorm(nn.RMSNorm):
    """RMSNorm whose weight follows the input dtype, so it keeps the fused kernel under bf16
    autocast (``nn.RMSNorm`` falls back to a slow path on mixed dtypes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``.

    Works on tokens ``(N, L, dim)``, or on any layout where the sequence axis is not next to the
    channels: pass ``seq_dim`` to attend along another axis of a ``(..., dim)`` tensor without
    copying it into ``(N, L, dim)`` first (used for attention over frames).

    Args:
        dim: channels.
        heads: attention heads; ``dim`` must divide evenly.
        qk_norm: RMS-normalise queries and keys per head (stabilises bf16 and large models).
        rotary: rotate queries and keys by their position along the sequence (RoPE).
        zero_init_out: start the output projection at zero, so the branch is the identity
            around its residual (used for temporal branches).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        qk_norm: bool = False,
        rotary: bool = False,
        zero_init_out: bool = False,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise UserError(f"Attention dim {dim} is not divisible by heads {heads}.")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.rotary = RotaryEmbedding(self.head_dim) if rotary else None
        if zero_init_out:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(
        self, x: torch.Tensor, seq_dim: int = -2, gate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend along ``seq_dim`` of ``x (..., dim)``; returns the same shape.

        ``gate (B, 1, ..., dim)`` multiplies the output inside the output projection
        (:func:`~vdm.models.fused.gated_linear`), which saves one activation for backward.
        """
        seq_dim = seq_dim % x.dim()
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim))  # (..., 3, h, d)
        # Move (3, heads) in front of the sequence axis: (..., 3, heads, L, d), a view.
        qkv = qkv.movedim(seq_dim, -3).movedim(-3, -2)
        q, k, v = qkv.unbind(dim=-4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(q.shape[-2], q.device)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # SDPA's fused CPU kernel takes 4D inputs only (others fall back to the ~3x slower
        # math path), so fold every batch axis into one.
        batch_shape = q.shape[:-3]
        q, k, v = (z.reshape(-1, *z.shape[-3:]) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, d)
        out = out.reshape(*batch_shape, *out.shape[-3:])
        out = out.movedim(-2, seq_dim).flatten(-2)  # back to x's layout: (..., dim)
        if gate is not None:
            return gated_linear(out, self.out.weight, self.out.bias, gate)
        return self.out(out)


class Mlp(nn.Module):
    """Two-layer feed-forward with GELU (tanh approximation, as in DiT)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """``fc2(GELU(fc1(x)))``, times ``gate (B, 1, ..., dim)`` when given.

        Gated and without active dropout, GELU and fc2 run as one
        :func:`~vdm.models.fused.gated_linear`, which keeps neither the GELU output nor fc2's.
        """
        hidden = self.fc1(x)
        if gate is not None and not (self.dropout.p and self.training):
            return gated_linear(hidden, self.fc2.weight, self.fc2.bias, gate, gelu=True)
        out = self.fc2(self.dropout(F.gelu(hidden, approximate="tanh")))
        return out if gate is None else gate * out


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conditioning_channels(in_channels: int) -> int:
    """Input channels frame conditioning adds: the mask, and the nearest given frame before and
    after each frame (``1 + 2·C``)."""
    return 1 + 2 * in_channels


def nearest_given_frames(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """For every frame of ``x (B, C, T, H, W)``, the nearest given frame at or before it and the
    nearest at or after it, stacked on channels ``(B, 2C, T, H, W)``; zeros where there is none.

    They put the given frames' pixels beside every frame, so spatial layers can continue them
    without first learning to carry them along the temporal layers (as MCVD's channel-stacked
    past frames do).
    """
    b, frames = x.shape[0], x.shape[2]
    position = torch.arange(frames, device=x.device).expand(b, frames)
    before = torch.where(context, position, -1).cummax(dim=1).values
    after = torch.where(context, position, frames).flip(1).cummin(dim=1).values.flip(1)
    refs = []
    for index, present in ((before, before >= 0), (after, after < frames)):
        gathered = x.gather(2, index.clamp(0, frames - 1)[:, None, :, None, None].expand_as(x))
        refs.append(gathered * present[:, None, :, None, None].to(x.dtype))
    return torch.cat(refs, dim=1)


def frame_conditioning_inputs(
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor | None,
    enabled: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoiser input and steps for frame conditioning.

    With ``enabled``, the bool context mask ``(B, T)`` (True = given frame; None = none given)
    becomes one more input channel (FDM), followed by the nearest given frames before and after
    each frame (:func:`nearest_given_frames`), and steps ``t (B,)`` become per-frame ``(B, T)``.
    Without it, ``x`` and ``t`` pass unchanged, and a mask with a given frame is an error: such a
    model never learned to read one.

    Returns:
        ``(x, t)``: ``x`` with ``C + conditioning_channels(C)`` channels when enabled, ``t`` as
        ``(B,)`` or ``(B, T)``.
    """
    b, _, frames, h, w = x.shape
    if t.dim() == 2 and t.shape != (b, frames):
        raise UserError(f"Per-frame steps t must be (B, T) = {(b, frames)}, got {tuple(t.shape)}.")
    if context is not None and context.shape != (b, frames):
        raise UserError(f"context must be (B, T) = {(b, frames)}, got {tuple(context.shape)}.")
    if not enabled:
        if context is not None and bool(context.any()):
            raise UserError(
                "This denoiser was built without frame conditioning (model.frame_conditioning="
                "false, trained with context=none), so it cannot take given frames: train one "
                "with context=mixed."
            )
        return x, t
    if context is None:
        context = torch.zeros(b, frames, dtype=torch.bool, device=x.device)
    mask = context.to(x.dtype)[:, None, :, None, None].expand(b, 1, frames, h, w)
    if t.dim() == 1:
        t = t[:, None].expand(b, frames)
    return torch.cat([x, mask, nearest_given_frames(x, context)], dim=1), t


def per_frame_labels(labels: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """Labels ``(B,)`` (or any per-clip rows ``(B, ...)``, e.g. pooled text) repeated for each of
    ``frames`` frames: ``(B·frames, ...)``."""
    return None if labels is None else labels.repeat_interleave(frames, dim=0)


def check_text(text: object, text_dim: int, model: str) -> None:
    """Refuse text for a model built without it, a missing one for a model built with it, and
    embeddings of another width, each in one line."""
    if text is None:
        if text_dim:
            raise UserError(
                f"This {model} was built with text (text_dim={text_dim}): pass text=, the "
                'embedding of the prompts (of "" for an unconditional call).'
            )
        return
    if not text_dim:
        raise UserError(
            f"Text was passed to a {model} built without it (text_dim=0): train with a "
            "text_encoder (text_encoder=tiny, t5 or clip), or pass text=None."
        )
    if text.tokens.shape[-1] != text_dim:
        raise UserError(
            f"The text embedding is {text.tokens.shape[-1]} wide, but this {model} was built for "
            f"text_dim={text_dim}: use the text encoder it was trained with."
        )
