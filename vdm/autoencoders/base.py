"""The one interface every autoencoder has: video in [-1, 1] to normalised latents and back, the
factors that relate their shapes, and a fingerprint that names the weights. Pixel space is the
identity case (:class:`PixelSpace`), so nothing downstream branches on it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import nn

from vdm.errors import UserError


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, in name order): the
    same weights give the same digest wherever their files lie."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def latent_frame_count(frames: int, factor: int, causal: bool) -> int | None:
    """Latent frames of a ``frames``-frame clip under the frame rule: ``1 + factor·k`` frames for
    a causal autoencoder (the first frame alone), a multiple of ``factor`` otherwise; None for a
    count off the rule."""
    if causal:
        return 1 + (frames - 1) // factor if frames >= 1 and (frames - 1) % factor == 0 else None
    return frames // factor if frames >= factor and frames % factor == 0 else None


def frame_count_near(frames: int, factor: int, causal: bool) -> int:
    """A frame count on the rule near ``frames``, for messages."""
    if causal:
        return 1 + factor * max(1, (frames - 1) // factor)
    return max(factor, frames // factor * factor)


class Autoencoder:
    """A frozen autoencoder behind vdm's interface.

    ``latents = (z - shift) * scale`` per channel, where ``z`` is the model's own latent: a
    scalar ``scaling_factor`` / ``shift_factor`` (the SD VAE: 0.18215, 0) or per-channel
    ``latents_mean`` / ``latents_std`` (Wan: ``scale = 1 / std``) both fit. Subclasses give
    :meth:`raw_posterior` and :meth:`raw_decode` on one chunk; this class adds the chunking, the
    device, the dtype, ``no_grad`` and the normalisation.

    The causal frame rule: a causal video VAE (Wan, CogVideoX, HunyuanVideo, LTX) maps
    ``1 + k·temporal_factor`` frames to ``1 + k`` latent frames (the first frame alone).

    Args:
        network: the model (put in eval mode, ``requires_grad`` off).
        latent_channels, spatial_factor, temporal_factor, causal: its geometry.
        shift, scale: per-channel normalisation (a scalar broadcasts).
        dtype: the dtype it computes in (inputs are cast; outputs come back float32).
        batch_chunk: clips per encode or decode call (decode memory does not grow with the
            number of clips sampled).
        fingerprint: what names it in a checkpoint: kind, class, weights' SHA-256, geometry and
            normalisation.
    """

    def __init__(
        self,
        network: nn.Module,
        latent_channels: int,
        spatial_factor: int,
        temporal_factor: int,
        causal: bool,
        shift: torch.Tensor | float,
        scale: torch.Tensor | float,
        fingerprint: dict,
        dtype: torch.dtype = torch.float32,
        batch_chunk: int = 8,
    ) -> None:
        if batch_chunk < 1:
            raise UserError(f"autoencoder.batch_chunk={batch_chunk}: must be >= 1.")
        self.network = network.eval().requires_grad_(False)
        if any(p.dtype != dtype for p in network.parameters()):
            self.network.to(dtype)
        self.latent_channels, self.spatial_factor = latent_channels, spatial_factor
        self.temporal_factor, self.causal = temporal_factor, causal
        shape = (1, -1, 1, 1, 1)
        self.shift = torch.as_tensor(shift, dtype=torch.float32).reshape(shape)
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(shape)
        self.dtype, self.batch_chunk = dtype, batch_chunk
        self.fingerprint = {
            **fingerprint,
            "latent_channels": latent_channels,
            "spatial_factor": spatial_factor,
            "temporal_factor": temporal_factor,
            "causal": causal,
            "shift": self.shift.flatten().tolist(),
            "scale": self.scale.flatten().tolist(),
        }

    def __deepcopy__(self, memo: dict) -> Autoencoder:
        # Frozen: a copy of a module holding it (the EMA's averaged model) shares it.
        return self

    # --- geometry ---------------------------------------------------------------------------
    def latent_frames_for(self, frames: int) -> int:
        """Latent frames of a ``frames``-frame clip; a count off the frame rule is refused."""
        f = self.temporal_factor
        latent = latent_frame_count(frames, f, self.causal)
        if latent is not None:
            return latent
        near = frame_count_near(frames, f, self.causal)
        rule = f"1 + {f}·k (e.g. {near})" if self.causal else f"a multiple of {f}"
        raise UserError(
            f"{frames} frames: this autoencoder (temporal factor {f}) takes {rule} frames per "
            "clip: change data.clip_len (or frames=)."
        )

    def frames_for(self, latent_frames: int) -> int:
        """Frames of the clip that ``latent_frames`` latent frames decode to."""
        f = self.temporal_factor
        return 1 + (latent_frames - 1) * f if self.causal else latent_frames * f

    def latent_shape(self, clip_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """``(C', T', H', W')`` of the latents of a clip ``(C, T, H, W)``."""
        _, t, h, w = clip_shape
        f = self.spatial_factor
        if h % f or w % f:
            raise UserError(
                f"{h}x{w} px: this autoencoder (spatial factor {f}) needs sizes divisible by {f}: "
                f"change data.size (e.g. {max(f, h // f * f)})."
            )
        return (self.latent_channels, self.latent_frames_for(t), h // f, w // f)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Given-frame mask ``(N, T)`` at latent-frame granularity ``(N, T')``: a latent frame is
        given when every frame it encodes is (the first latent frame of a causal VAE encodes
        frame 0 alone)."""
        f = self.temporal_factor
        if f == 1:
            return mask
        if self.causal:
            first, rest = mask[:, :1], mask[:, 1:]
            return torch.cat([first, rest.reshape(len(mask), -1, f).all(-1)], dim=1)
        return mask.reshape(len(mask), -1, f).all(-1)

    # --- encode / decode --------------------------------------------------------------------
    def raw_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own posterior ``(mean, std)`` of one chunk of clips."""
        raise NotImplementedError

    def raw_decode(self, z: torch.Tensor) -> torch.Tensor:
        """The video of one chunk of the model's own latents."""
        raise NotImplementedError

    def _chunks(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        self.network.to(x.device)  # a no-op once there: the module moves it lazily
        yield from x.split(self.batch_chunk)

    @torch.no_grad()
    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised posterior ``(mean, std)`` float32 of ``video (B, C, T, H, W)``."""
        self.latent_shape(tuple(video.shape[1:]))  # refuses a size or frame count it cannot take
        means, stds = [], []
        for chunk in self._chunks(video):
            mean, std = self.raw_posterior(chunk.to(self.dtype))
            means.append((mean.float() - self.shift.to(mean.device)) * self.scale.to(mean.device))
            stds.append(std.float() * self.scale.to(std.device).abs())
        return torch.cat(means), torch.cat(stds)

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latents of ``video``: a posterior sample drawn from ``generator``
        (its mean when ``generator`` is None)."""
        mean, std = self.posterior(video)
        if generator is None:
            return mean
        return sample_posterior(mean, std, generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Video float32 in [-1, 1] of normalised ``latents``, ``batch_chunk`` clips at a time."""
        videos = []
        for chunk in self._chunks(latents):
            z = chunk.float() / self.scale.to(chunk.device) + self.shift.to(chunk.device)
            videos.append(self.raw_decode(z.to(self.dtype)).float().clamp(-1, 1))
        return torch.cat(videos)


def check_geometry(autoencoder: Autoencoder, geometry: dict) -> None:
    """Refuse config values (``latent_channels`` etc., when set) that the model contradicts."""
    for name, value in geometry.items():
        actual = getattr(autoencoder, name, None)
        if value is not None and actual is not None and value != actual:
            raise UserError(
                f"autoencoder.{name}={value}, but the autoencoder has {actual}: leave "
                f"autoencoder.{name} unset (it is read from the model)."
            )


def describe(fingerprint: dict | None) -> str:
    """``vdm VideoVAE 1a2b3c4d5e6f`` (kind, class, start of the weights' SHA-256), or pixels."""
    if fingerprint is None:
        return "pixels (autoencoder=none)"
    kind, cls, digest = (fingerprint.get(k) for k in ("kind", "class", "sha256"))
    return f"the {kind} autoencoder {cls} {str(digest)[:12]}"


def check_same_autoencoder(stored: dict | None, autoencoder: Autoencoder, key: str) -> None:
    """Refuse, in one line naming ``key``, a checkpoint whose recorded autoencoder fingerprint
    ``stored`` (None: pixel space) is not ``autoencoder``'s: other weights, another
    normalisation or geometry, or pixels."""
    if stored == autoencoder.fingerprint:
        return
    raise UserError(
        f"{key}: trained on {describe(stored)}, not on {describe(autoencoder.fingerprint)}: use "
        "the autoencoder it was trained with (its run config's autoencoder=...)."
    )


def sample_posterior(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``mean + std · ε`` with ε from ``generator`` (on the tensors' device)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise


class PixelSpace(Autoencoder):
    """No autoencoder: latents are the video itself (``autoencoder=none``). Every method is
    the identity, so a pixel-space run computes exactly what it did before autoencoders."""

    def __init__(
        self, latent_channels: int = 3, spatial_factor: int = 1, temporal_factor: int = 1,
        causal: bool = False,
    ) -> None:  # fmt: skip
        if (spatial_factor, temporal_factor, causal) != (1, 1, False):
            raise UserError(
                "autoencoder=none is pixel space: leave autoencoder.spatial_factor, "
                "temporal_factor and causal at 1, 1, false."
            )
        self.latent_channels, self.spatial_factor, self.temporal_factor = latent_channels, 1, 1
        self.causal, self.fingerprint = False, None

    def latent_shape(self, clip_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        return tuple(clip_shape)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return video, torch.zeros_like(video)

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents
