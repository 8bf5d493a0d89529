"""vdm's own video VAE behind the autoencoder interface, from a checkpoint of
``python train.py task=autoencoder``."""

from __future__ import annotations

from pathlib import Path

import torch

from vdm.autoencoders.base import Autoencoder, check_geometry, weights_sha256
from vdm.autoencoders.dtypes import torch_dtype
from vdm.errors import UserError
from vdm.files.verify import load_plain, verify_checkpoint_file
from vdm.models.video_vae import VideoVAE

KEY = "autoencoder.ckpt_path"


class VdmAutoencoder(Autoencoder):
    """A trained :class:`~vdm.models.video_vae.VideoVAE`; normalised with the per-channel
    statistics of the posterior means it tracked in training."""

    def __init__(
        self, vae: VideoVAE, fingerprint: dict, dtype: str = "float32", batch_chunk: int = 8
    ):
        if int(vae.stats_seen) == 0:
            raise UserError(
                f"{KEY}: this VAE never saw a training batch (no latent statistics): train it "
                "with python train.py task=autoencoder first."
            )
        super().__init__(
            vae, vae.latent_channels, vae.spatial_factor, temporal_factor=1, causal=False,
            shift=vae.latents_mean.clone(), scale=1.0 / vae.latents_std.clone(),
            fingerprint=fingerprint, dtype=torch_dtype(dtype, "autoencoder.dtype"),
            batch_chunk=batch_chunk,
        )  # fmt: skip

    def raw_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.network.encode(video)
        return mean, torch.exp(0.5 * logvar)

    def raw_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.network.decode(z)


def vae_from_checkpoint(ckpt_path: str | Path, key: str = KEY) -> VideoVAE:
    """The VAE of a ``task=autoencoder`` checkpoint (file verified, read as data only)."""
    path = verify_checkpoint_file(ckpt_path, key)
    checkpoint = load_plain(path, key)
    config = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if config.get("task") != "autoencoder" or not isinstance(config.get("vae"), dict):
        raise UserError(
            f"{key}={path} is not a checkpoint of vdm's VAE (python train.py task=autoencoder); "
            "a diffusion run's checkpoint goes in ckpt_path=, a published VAE in "
            "autoencoder=diffusers autoencoder.path=DIR."
        )
    options = {k: v for k, v in config["vae"].items() if not k.startswith("_")}
    vae = VideoVAE(**options)
    state = {
        k[len("vae.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("vae.")
    }
    try:
        vae.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(
            f"{key}={path}: its weights do not fit its VAE config ({str(error).splitlines()[0]})."
        ) from None
    return vae


def vdm_geometry(ckpt_path: str | None) -> dict:
    """``latent_channels``, ``spatial_factor``, ``temporal_factor``, ``causal`` of the VAE in
    ``ckpt_path``."""
    if not ckpt_path:
        raise UserError(f"autoencoder=vdm needs {KEY}=<run dir>/checkpoints/last.ckpt of "
                        "python train.py task=autoencoder.")  # fmt: skip
    vae = vae_from_checkpoint(ckpt_path)
    return {"latent_channels": vae.latent_channels, "spatial_factor": vae.spatial_factor,
            "temporal_factor": 1, "causal": False}  # fmt: skip


def load_vdm_autoencoder(
    ckpt_path: str, dtype: str = "float32", batch_chunk: int = 8, **geometry
) -> VdmAutoencoder:
    """vdm's VAE from ``ckpt_path`` (``autoencoder=vdm``); ``geometry`` (the config's
    ``latent_channels`` / ``spatial_factor`` / ``temporal_factor``, filled in from the file) is
    checked against it."""
    if not ckpt_path:
        raise UserError(f"autoencoder=vdm needs {KEY}=<run dir>/checkpoints/last.ckpt of "
                        "python train.py task=autoencoder.")  # fmt: skip
    vae = vae_from_checkpoint(ckpt_path)
    fingerprint = {"kind": "vdm", "class": "VideoVAE", "sha256": weights_sha256(vae)}
    autoencoder = VdmAutoencoder(vae, fingerprint, dtype, batch_chunk)
    check_geometry(autoencoder, geometry)
    return autoencoder
