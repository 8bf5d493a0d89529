"""vdm's own video VAE: a small KL autoencoder that compresses each frame ``spatial_factor``-fold
in height and width into ``latent_channels`` channels, with a temporal mixing layer per block
so that a latent frame can lean on its neighbours. It keeps the frame count (temporal factor 1):
on short clips the denoiser's cost is dominated by the spatial positions, and a frame-exact
latent keeps frame masks (prediction, interpolation) exact.

``forward`` works on ``(B, C, T, H, W)``; :meth:`encode` gives the posterior's mean and
log-variance, :meth:`decode` the video. Normalisation of the latents for diffusion is the
:class:`~vdm.autoencoders.VdmAutoencoder`'s job; this module only tracks the per-channel
statistics of the posterior means it saw in training (buffers ``latents_mean`` / ``latents_std``,
saved with its weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vdm.errors import UserError

LOGVAR_RANGE = (-30.0, 20.0)  # clamp as the SD VAE does: exp() stays finite in fp16


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels, eps=1e-6)


class FrameResBlock(nn.Module):
    """Two 3×3 convolutions on every frame, then a 3-tap convolution along time, with a skip."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(channels), nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = (
            norm(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.temporal = nn.Conv1d(
            out_channels, out_channels, 3, padding=1, padding_mode="replicate"
        )
        nn.init.zeros_(self.temporal.weight)  # starts as a per-frame block
        nn.init.zeros_(self.temporal.bias)
        self.skip = (
            nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        bt, c, hh, ww = h.shape
        # (B·T, C, H, W) -> (B·H·W, C, T): mix along time at every position.
        seq = h.view(bt // frames, frames, c, hh, ww).permute(0, 3, 4, 2, 1).reshape(-1, c, frames)
        mixed = self.temporal(seq).view(bt // frames, hh, ww, c, frames).permute(0, 4, 3, 1, 2)
        return self.skip(x) + h + mixed.reshape(bt, c, hh, ww)


class VideoVAE(nn.Module):
    """A KL video autoencoder with spatial factor ``2 ** (len(channel_mult) - 1)``.

    Args:
        in_channels: video channels (3).
        latent_channels: channels of the latent.
        base_channels: channels at full resolution.
        channel_mult: channels per level, as multiples of ``base_channels``; each level after
            the first halves the height and width.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
    ) -> None:
        super().__init__()
        if latent_channels < 1 or base_channels < 1 or not channel_mult:
            raise UserError(
                f"vae: latent_channels={latent_channels}, base_channels={base_channels} and "
                f"channel_mult={list(channel_mult)} must be >= 1 and non-empty."
            )
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.spatial_factor = 2 ** (len(channel_mult) - 1)
        widths = [base_channels * m for m in channel_mult]
        self.enc_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.enc_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, width in enumerate(widths):
            self.enc_blocks.append(FrameResBlock(widths[max(i - 1, 0)], width))
            if i < len(widths) - 1:
                self.downs.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.enc_mid = FrameResBlock(widths[-1], widths[-1])
        self.enc_norm = norm(widths[-1])
        self.enc_out = nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)
        self.dec_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        self.dec_mid = FrameResBlock(widths[-1], widths[-1])
        self.dec_blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        reversed_widths = widths[::-1]
        for i, width in enumerate(reversed_widths):
            self.dec_blocks.append(FrameResBlock(reversed_widths[max(i - 1, 0)], width))
            if i < len(widths) - 1:
                self.ups.append(nn.Conv2d(width, width, 3, padding=1))
        self.dec_norm = norm(widths[0])
        self.dec_out = nn.Conv2d(widths[0], in_channels, 3, padding=1)
        self.register_buffer("latents_mean", torch.zeros(latent_channels))
        self.register_buffer("latents_std", torch.ones(latent_channels))
        self.register_buffer("stats_seen", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _frames(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``(B, C, T, H, W)`` as ``(B·T, C, H, W)``, with B and T."""
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w), b, t

    @staticmethod
    def _video(x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        return x.view(b, t, *x.shape[1:]).transpose(1, 2)

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior ``(mean, logvar)``, each ``(B, latent_channels, T, H/f, W/f)``."""
        if (
            video.dim() != 5
            or video.shape[-1] % self.spatial_factor
            or video.shape[-2] % self.spatial_factor
        ):
            raise UserError(
                f"vdm's VAE takes (B, C, T, H, W) with H and W divisible by {self.spatial_factor}; "
                f"got {tuple(video.shape)}: change data.size."
            )
        x, b, t = self._frames(video)
        h = self.enc_in(x)
        for i, block in enumerate(self.enc_blocks):
            h = block(h, t)
            if i < len(self.downs):
                h = self.downs[i](h)
        h = self.enc_out(F.silu(self.enc_norm(self.enc_mid(h, t))))
        mean, logvar = h.chunk(2, dim=1)
        return self._video(mean, b, t), self._video(logvar.clamp(*LOGVAR_RANGE), b, t)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The video ``(B, in_channels, T, H·f, W·f)`` of ``latents`` (not clamped)."""
        z, b, t = self._frames(latents)
        h = self.dec_mid(self.dec_in(z), t)
        for i, block in enumerate(self.dec_blocks):
            h = block(h, t)
            if i < len(self.ups):
                h = self.ups[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self._video(self.dec_out(F.silu(self.dec_norm(h))), b, t)

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruction of a posterior sample, with the posterior ``(mean, logvar)``."""
        mean, logvar = self.encode(video)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(mean + torch.exp(0.5 * logvar) * noise), mean, logvar

    @torch.no_grad()
    def track_latent_statistics(self, mean: torch.Tensor, momentum: float = 0.01) -> None:
        """Move ``latents_mean`` / ``latents_std`` towards the per-channel statistics of a batch
        of posterior means (the first batch sets them)."""
        dims = [0, 2, 3, 4]
        batch_mean = mean.float().mean(dims)
        batch_std = mean.float().std(dims).clamp_min(1e-4)
        rate = 1.0 if int(self.stats_seen) == 0 else momentum
        self.latents_mean.lerp_(batch_mean, rate)
        self.latents_std.lerp_(batch_std, rate)
        self.stats_seen += 1


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per sample, averaged over the latent's elements."""
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())
    return kl.flatten(1).mean(1)
