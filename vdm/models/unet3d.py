"""UNet3D: a factorized space-time U-Net after Ho et al. (2022), "Video Diffusion Models".

Spatial layers see one frame at a time; temporal layers (a (3,1,1) convolution in every residual
block and self-attention over frames at every level) relate frames. Every temporal branch
starts at zero, so a fresh model is a per-frame image U-Net.

Layout: inside the network a video is a batch of frames ``(B·T, C, H, W)`` in channels-last
memory, which is ``(B, T, H, W, C)`` contiguous. Spatial convolutions then run as 2D
channels-last convolutions (about twice as fast on CPU as (1,3,3) 3D convolutions), attention
and temporal convolutions are matmuls over the channel axis, and no layer copies the tensor
into another layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vdm.errors import UserError
from vdm.models.layers import (
    Attention,
    ConditionEmbedder,
    CrossAttention,
    check_text,
    conditioning_channels,
    frame_conditioning_inputs,
    per_frame_labels,
)
from vdm.models.text_embedding import TextEmbedding

CHANNELS_LAST = torch.channels_last


def _groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count ≤ ``max_groups`` dividing ``channels`` (GroupNorm needs one)."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def frames_last(x: torch.Tensor, frames: int) -> torch.Tensor:
    """View frames ``(B·T, C, H, W)`` (channels-last) as tokens ``(B, T, H, W, C)``."""
    bt, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(bt // frames, frames, h, w, c)


def frames_first(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`frames_last`: tokens ``(B, T, H, W, C)`` → frames ``(B·T, C, H, W)``."""
    b, t, h, w, c = x.shape
    return x.reshape(b * t, h, w, c).permute(0, 3, 1, 2)


class TemporalConv(nn.Module):
    """A (3,1,1) convolution over frames, zero-initialised, as one matmul plus shifted adds.

    Computes ``y_t = W_0·x_{t-1} + W_1·x_t + W_2·x_{t+1} + b`` (zero padding at the ends) by
    projecting every frame once to ``3·C`` channels and adding the shifted thirds, which avoids
    a 3D convolution on a channels-last tensor.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, 3 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        tokens = frames_last(x, frames)  # (B, T, H, W, C)
        prev, cur, nxt = self.proj(tokens).chunk(3, dim=-1)
        out = cur + F.pad(prev[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0))
        out = out + F.pad(nxt[:, 1:], (0, 0, 0, 0, 0, 0, 0, 1))
        return frames_first(out)


def _norm_act(
    norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None
) -> torch.Tensor:
    h = norm(x)
    if scale is not None:
        h = torch.addcmul(shift, h, 1 + scale)
    return F.silu(h)


def norm_act(
    norm: nn.GroupNorm,
    x: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``SiLU(GroupNorm(x)·(1 + scale) + shift)`` (scale and shift optional).

    In training the chain is checkpointed: backward recomputes its elementwise steps from ``x``
    instead of keeping the normed and modulated copies, one or two activations per residual
    block, for the price of one more GroupNorm and SiLU (no convolution is recomputed).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(_norm_act, norm, x, scale, shift, use_reentrant=False)
    return _norm_act(norm, x, scale, shift)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv(3×3) → GroupNorm·(1+scale)+shift → SiLU → dropout → conv(3×3),
    plus a zero-initialised temporal convolution, around a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.temporal_conv = TemporalConv(out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.conv1(norm_act(self.norm1, x))
        # (B, 2C) per clip, or (B·T, 2C) per frame → (B·T, 2C, 1, 1)
        scale_shift = self.emb_proj(F.silu(emb))
        if scale_shift.shape[0] != x.shape[0]:
            scale_shift = scale_shift.repeat_interleave(frames, 0)
        scale, shift = scale_shift[..., None, None].chunk(2, 1)
        h = self.conv2(self.dropout(norm_act(self.norm2, h, scale, shift)))
        h = h + self.temporal_conv(h, frames)
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """Self-attention over the pixels of each frame (pre-LayerNorm, residual)."""

    def __init__(self, channels: int, heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, qk_norm=qk_norm)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(bt, h * w, c)  # a view in channels-last
        out = self.attn(self.norm(tokens))
        return x + out.reshape(bt, h, w, c).permute(0, 3, 1, 2)


class TemporalAttention(nn.Module):
    """Self-attention over the frames at each pixel, with rotary (relative) frame positions;
    the output projection starts at zero."""

    def __init__(self, channels: int, heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, qk_norm=qk_norm, rotary=True, zero_init_out=True)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        tokens = frames_last(x, frames)  # (B, T, H, W, C)
        out = self.attn(self.norm(tokens), seq_dim=1)
        return x + frames_first(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 convolution (frames are never downsampled)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W (nearest) and smooth with a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the U-Net: a residual block, then optional spatial attention (and,
    with text, cross-attention to the caption after it), then temporal attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        heads: int,
        spatial_attention: bool,
        dropout: float,
        qk_norm: bool,
        text_dim: int = 0,
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.spatial_attn = SpatialAttention(out_ch, heads, qk_norm) if spatial_attention else None
        self.temporal_attn = TemporalAttention(out_ch, heads, qk_norm)
        # Created last, and only with text: a model without text keeps its parameters and init.
        with_text = spatial_attention and text_dim > 0
        self.cross_attn = CrossAttention(out_ch, text_dim, heads, qk_norm) if with_text else None

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        frames: int,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.res(x, emb, frames)
        if self.spatial_attn is not None:
            x = self.spatial_attn(x, frames)
        if self.cross_attn is not None and text_tokens is not None:
            # Every pixel of every frame of a clip queries the clip's caption: one sequence
            # (T·H·W) per clip, so the caption's keys are computed once, not once per frame.
            bt, c, h, w = x.shape
            tokens = x.permute(0, 2, 3, 1).reshape(bt // frames, frames * h * w, c)
            tokens = self.cross_attn(tokens, text_tokens, text_mask)
            x = tokens.reshape(bt, h, w, c).permute(0, 3, 1, 2)
        return self.temporal_attn(x, frames)


class UNet3D(nn.Module):
    """Factorized space-time U-Net denoiser.

    Example:
        >>> model = UNet3D(in_channels=3, out_channels=3, num_classes=3)
        >>> out = model(torch.randn(2, 3, 8, 32, 32), torch.tensor([10, 500]), torch.tensor([0, 2]))
        >>> out.shape
        torch.Size([2, 3, 8, 32, 32])

    Args:
        in_channels: channels of the input video.
        out_channels: channels of the output (the prediction; equal to ``in_channels``).
        num_classes: number of classes for class conditioning; 0 = unconditional. Index
            ``num_classes`` is the null label used by classifier-free guidance.
        base_channels: channels at the first level; wider = better and slower.
        channel_mult: channel multiplier per level; the number of entries sets the depth
            (the input size must be divisible by ``2**(len - 1)``).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: downsampling factors (1, 2, 4, ...) at which spatial
            self-attention runs; temporal attention runs at every level.
        heads: attention heads (channels per head = channels / heads).
        dropout: dropout inside residual blocks.
        qk_norm: RMS-normalise queries and keys (helps bf16 and large models).
        gradient_checkpointing: recompute each level's activations in the backward pass,
            trading about a third more compute for much less memory.
        patch_size: side of the pixel patches folded into channels before the first level
            (space-to-depth) and unfolded after the last. 2 runs every level at half the
            resolution (about 1.5× faster at 32²); ``attention_resolutions`` then count from
            the folded resolution. 1 = none (Ho et al.'s U-Net).
        frame_conditioning: take given frames: the context mask enters as one more input
            channel (its weights start at zero) and steps may be per frame ``(B, T)``. Off, the
            model is exactly the one without it (same parameters, same outputs).
        text_dim: width of the caption embeddings (the text encoder's ``dim``); 0 = no text.
            With text, the levels with spatial attention also cross-attend to the caption's
            tokens and the pooled caption joins the time embedding, all from zero. 0 builds
            exactly the model without text.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_classes: int = 0,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (4,),
        heads: int = 4,
        dropout: float = 0.0,
        qk_norm: bool = False,
        gradient_checkpointing: bool = False,
        patch_size: int = 1,
        frame_conditioning: bool = False,
        text_dim: int = 0,
    ) -> None:
        super().__init__()
        if patch_size < 1:
            raise UserError(
                f"UNet3D patch_size must be >= 1, got {patch_size}: fix model.patch_size."
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_classes = num_classes
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_size = patch_size
        self.frame_conditioning = frame_conditioning
        self.text_dim = text_dim
        # H and W must survive the patch fold and every downsampling.
        self.downsample_factor = patch_size * 2 ** (len(channel_mult) - 1)
        emb_dim = 4 * base_channels
        self.cond = ConditionEmbedder(emb_dim, num_classes, text_dim)
        # + the context mask and the nearest given frames
        inputs = in_channels + (conditioning_channels(in_channels) if frame_conditioning else 0)
        self.conv_in = nn.Conv2d(inputs * patch_size**2, base_channels, 3, padding=1)
        if frame_conditioning:  # the conditioning channels (folded p²) come last: start at zero
            nn.init.zeros_(self.conv_in.weight[:, in_channels * patch_size**2 :])

        def level(cin: int, cout: int, factor: int) -> Level:
            return Level(
                cin,
                cout,
                emb_dim,
                heads,
                factor in attention_resolutions,
                dropout,
                qk_norm,
                text_dim,
            )

        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skips, ch, factor = [base_channels], base_channels, 1
        for i, mult in enumerate(channel_mult):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(level(ch, base_channels * mult, factor))
                ch = base_channels * mult
                skips.append(ch)
            self.down.append(blocks)
            last = i == len(channel_mult) - 1
            self.downsamplers.append(nn.Identity() if last else Downsample(ch))
            if not last:
                skips.append(ch)
                factor *= 2
        self.mid = nn.ModuleList([level(ch, ch, factor), level(ch, ch, factor)])
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(level(ch + skips.pop(), base_channels * mult, factor))
                ch = base_channels * mult
            self.up.append(blocks)
            self.upsamplers.append(Upsample(ch) if i > 0 else nn.Identity())
            if i > 0:
                factor //= 2
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_channels * patch_size**2, 3, padding=1)

    def _run(self, block: nn.Module, *args) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

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
        check_text(text, self.text_dim, "UNet3D")
        pooled = None if text is None else text.pooled
        tokens, mask = (None, None) if text is None else (text.tokens, text.mask)
        b, _, frames, h, w = x.shape
        if h % self.downsample_factor or w % self.downsample_factor:
            raise UserError(
                f"UNet3D needs H and W divisible by {self.downsample_factor} "
                f"(patch_size * 2 ** (len(channel_mult) - 1)); got {h}x{w}: change data.size, "
                "model.channel_mult or model.patch_size."
            )
        x, t = frame_conditioning_inputs(x, t, context, self.frame_conditioning)
        c = x.shape[1]
        if t.dim() == 2:  # one embedding per frame: (B·T, D)
            emb = self.cond(
                t.reshape(-1), per_frame_labels(labels, frames), per_frame_labels(pooled, frames)
            )
        else:
            emb = self.cond(t, labels, pooled)
        # (B, C, T, H, W) → frames (B·T, C, H, W) in channels-last memory.
        x = x.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)
        x = self.conv_in(x.contiguous(memory_format=CHANNELS_LAST))
        skips = [x]
        for blocks, downsample in zip(self.down, self.downsamplers, strict=True):
            for block in blocks:
                x = self._run(block, x, emb, frames, tokens, mask)
                skips.append(x)
            if not isinstance(downsample, nn.Identity):
                x = downsample(x)
                skips.append(x)
        for block in self.mid:
            x = self._run(block, x, emb, frames, tokens, mask)
        for blocks, upsample in zip(self.up, self.upsamplers, strict=True):
            for block in blocks:
                x = self._run(block, torch.cat([x, skips.pop()], dim=1), emb, frames, tokens, mask)
            x = upsample(x)
        x = self.conv_out(F.silu(self.norm_out(x)))
        if self.patch_size > 1:
            x = F.pixel_shuffle(x, self.patch_size)
        return x.reshape(b, frames, self.out_channels, h, w).permute(0, 2, 1, 3, 4)
