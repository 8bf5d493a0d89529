"""SpaceTimeTransformer: a spatial-then-temporal diffusion transformer (Latte / STDiT family).

Each frame is cut into ``p×p`` patches (optionally ``pt`` frames deep). Every block runs
self-attention over the patches of each frame, then self-attention over the frames at each
patch position (with rotary, i.e. relative, frame positions), then an MLP. Each of the three
branches has its own LayerNorm and its own adaLN-Zero shift, scale and gate, computed from the
time (+ label) embedding (Peebles & Xie 2023). The gates start at zero, so a fresh block is the
identity: a fresh model is a per-frame patch model, and the temporal branch contributes nothing
until training opens its gate.

Tokens stay in one ``(B, T', S, D)`` tensor throughout: spatial attention takes sequences
along ``S``, temporal attention along ``T'``, both as strided views, with no reshuffling copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vdm.errors import UserError
from vdm.models.fused import norm_modulate
from vdm.models.layers import (
    Attention,
    ConditionEmbedder,
    CrossAttention,
    Mlp,
    check_text,
    conditioning_channels,
    frame_conditioning_inputs,
    per_frame_labels,
)
from vdm.models.text_embedding import TextEmbedding


def sincos_2d(grid_h: int, grid_w: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2D sine-cosine positions ``(grid_h·grid_w, dim)``: half the channels encode the
    row, half the column (MAE / DiT), so any grid size works."""
    if dim % 4:
        raise UserError(f"2D sin-cos positions need hidden_size divisible by 4, got {dim}.")
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.float()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim/2)

    rows = encode(torch.arange(grid_h, device=device))
    cols = encode(torch.arange(grid_w, device=device))
    return torch.cat(
        [rows[:, None].expand(-1, grid_w, -1), cols[None].expand(grid_h, -1, -1)], dim=-1
    ).reshape(grid_h * grid_w, dim)


def per_token(values: torch.Tensor) -> torch.Tensor:
    """Condition-derived values ``(B, D)`` or per frame ``(B, T', D)`` as ``(B, 1 or T', 1, D)``,
    to broadcast over tokens ``(B, T', S, D)``."""
    return values[:, None, None] if values.dim() == 2 else values[:, :, None]


class AdaLNZero(nn.Module):
    """Shift, scale and gate ``(B, 1, 1, D)`` each (``(B, T', 1, D)`` for a per-frame condition),
    from the condition; all zero at start, so the branch they modulate starts switched off
    (adaLN-Zero, Peebles & Xie 2023)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 3 * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return per_token(self.proj(F.silu(cond))).chunk(3, dim=-1)


class SpaceTimeBlock(nn.Module):
    """Spatial attention → temporal attention → MLP, each as ``x + gate·f(modulate(norm(x)))``.

    LayerNorm and modulation run as one :func:`~vdm.models.fused.norm_modulate`, and each gate
    multiplies inside its branch's last linear layer (:func:`~vdm.models.fused.gated_linear`):
    the same maths, with fewer activations kept for backward.

    Only the gates start at zero: zero-initialising a branch's output layer as well would leave
    both the gate and the layer without gradient, and the branch would never open.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        qk_norm: bool,
        text_dim: int = 0,
    ) -> None:
        super().__init__()
        self.spatial_attn = Attention(dim, heads, qk_norm=qk_norm)
        self.spatial_modulation = AdaLNZero(dim)
        self.temporal_attn = Attention(dim, heads, qk_norm=qk_norm, rotary=True)
        self.temporal_modulation = AdaLNZero(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.mlp_modulation = AdaLNZero(dim)
        # Created last, and only with text: a model without text keeps its parameters and init.
        self.cross_attn = CrossAttention(dim, text_dim, heads, qk_norm) if text_dim else None

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x (B, T', S, D)``, ``cond (B, D)`` or ``(B, T', D)`` → ``(B, T', S, D)``; with text,
        cross-attention to the caption follows the spatial attention (Latte-T2V, PixArt-α)."""
        shift, scale, gate = self.spatial_modulation(cond)
        x = x + self.spatial_attn(norm_modulate(x, shift, scale), gate=gate)
        if self.cross_attn is not None and text_tokens is not None:
            # All tokens of a clip query its caption as one sequence (T'·S queries).
            x = self.cross_attn(x.flatten(1, 2), text_tokens, text_mask).unflatten(1, x.shape[1:3])
        shift, scale, gate = self.temporal_modulation(cond)
        x = x + self.temporal_attn(norm_modulate(x, shift, scale), seq_dim=1, gate=gate)
        shift, scale, gate = self.mlp_modulation(cond)
        return x + self.mlp(norm_modulate(x, shift, scale), gate=gate)


class SpaceTimeTransformer(nn.Module):
    """Spatial-then-temporal transformer denoiser.

    Example:
        >>> model = SpaceTimeTransformer(in_channels=3, out_channels=3, num_classes=3)
        >>> model(torch.randn(2, 3, 8, 32, 32), torch.tensor([10, 500])).shape
        torch.Size([2, 3, 8, 32, 32])

    Args:
        in_channels: channels of the input video.
        out_channels: channels of the output (the prediction).
        num_classes: classes for conditioning; 0 = unconditional; index ``num_classes`` is the
            null label of classifier-free guidance.
        patch_size: side ``p`` of the square patches; H and W must be divisible by it. Smaller
            = more tokens = better and slower.
        temporal_patch_size: frames per patch ``pt``; the frame count must be divisible by it.
        hidden_size: token width D (divisible by 4 and by ``heads``).
        depth: number of space-time blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_size``.
        dropout: dropout in the MLPs.
        qk_norm: RMS-normalise queries and keys (helps bf16 and large models).
        gradient_checkpointing: recompute each block's activations in the backward pass.
        frame_conditioning: take given frames: the context mask enters as one more input
            channel (its weights start at zero) and steps may be per frame ``(B, T)``; a
            temporal patch gets the step of its noisiest frame. Off, the model is exactly the
            one without it (same parameters, same outputs).
        text_dim: width of the caption embeddings (the text encoder's ``dim``); 0 = no text.
            With text, every block cross-attends to the caption's tokens after its spatial
            attention and the pooled caption joins the time embedding, all from zero. 0 builds
            exactly the model without text.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_classes: int = 0,
        patch_size: int = 4,
        temporal_patch_size: int = 1,
        hidden_size: int = 192,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        qk_norm: bool = False,
        gradient_checkpointing: bool = False,
        frame_conditioning: bool = False,
        text_dim: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.text_dim = text_dim
        self.num_classes = num_classes
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        self.hidden_size = hidden_size
        self.gradient_checkpointing = gradient_checkpointing
        self.frame_conditioning = frame_conditioning
        # + the context mask and the nearest given frames
        inputs = in_channels + (conditioning_channels(in_channels) if frame_conditioning else 0)
        self.patch_embed = nn.Linear(inputs * temporal_patch_size * patch_size**2, hidden_size)
        if frame_conditioning:  # the conditioning channels' patch features come last: start at zero
            nn.init.zeros_(
                self.patch_embed.weight[:, in_channels * temporal_patch_size * patch_size**2 :]
            )
        self.cond = ConditionEmbedder(hidden_size, num_classes, text_dim)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(hidden_size, heads, mlp_ratio, dropout, qk_norm, text_dim)
            for _ in range(depth)
        )
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.proj_out = nn.Linear(hidden_size, out_channels * temporal_patch_size * patch_size**2)
        # Final shift/scale start at zero (plain LayerNorm). proj_out keeps its random init:
        # zero there would cut every gradient upstream of it in the first step.
        nn.init.zeros_(self.modulation_out[1].weight)
        nn.init.zeros_(self.modulation_out[1].bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        text: TextEmbedding | None = None,
    ) -> torch.Tensor:
        """Predict from noisy video ``x (B, C_in, T, H, W)`` at steps ``t``.

        Args:
            x: the noisy video (given frames clean).
            t: steps ``(B,)``, or ``(B, T)`` per frame (given frames at 0).
            labels: class labels ``(B,)``; None = the null label.
            context: bool ``(B, T)``, True for given frames (``frame_conditioning`` only).
            text: the captions' embedding (``text_dim > 0`` only; the null prompt's embedding,
                never None, for an unconditional call).

        Returns:
            ``(B, C_out, T, H, W)``.
        """
        check_text(text, self.text_dim, "SpaceTimeTransformer")
        pooled = None if text is None else text.pooled
        tokens_mask = () if text is None else (text.tokens, text.mask)
        frames, h, w = x.shape[-3:]
        p, pt = self.patch_size, self.temporal_patch_size
        if h % p or w % p or frames % pt:
            raise UserError(
                f"SpaceTimeTransformer needs H, W divisible by patch_size={p} and T by "
                f"temporal_patch_size={pt}; got T={frames}, {h}x{w}: change data.size / "
                "data.clip_len or the model's patch sizes."
            )
        x, t = frame_conditioning_inputs(x, t, context, self.frame_conditioning)
        gh, gw = h // p, w // p
        tokens = rearrange(x, "b c (t pt) (gh p) (gw q) -> b t (gh gw) (c pt p q)", pt=pt, p=p, q=p)
        tokens = self.patch_embed(tokens) + sincos_2d(gh, gw, self.hidden_size, x.device).to(
            tokens.dtype
        )
        if t.dim() == 2:  # per frame: one condition per temporal patch, its noisiest frame
            t = t.unflatten(1, (frames // pt, pt)).amax(-1)
            cond = self.cond(
                t.reshape(-1),
                per_frame_labels(labels, t.shape[1]),
                per_frame_labels(pooled, t.shape[1]),
            )
            cond = cond.unflatten(0, t.shape)  # (B, T', D)
        else:
            cond = self.cond(t, labels, pooled)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, cond, *tokens_mask, use_reentrant=False)
            else:
                tokens = block(tokens, cond, *tokens_mask)
        shift, scale = per_token(self.modulation_out(cond)).chunk(2, dim=-1)
        out = self.proj_out(norm_modulate(tokens, shift, scale))
        return rearrange(
            out,
            "b t (gh gw) (c pt p q) -> b c (t pt) (gh p) (gw q)",
            gh=gh,
            pt=pt,
            p=p,
            q=p,
            c=self.out_channels,
        )
