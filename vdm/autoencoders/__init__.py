"""Frozen autoencoders behind one interface: ``encode(video) -> latents`` (normalised) and
``decode``, with their geometry (:class:`Autoencoder`). Pixel space is the identity
(:class:`PixelSpace`). Nothing here imports Lightning or Hydra."""

from vdm.autoencoders.base import (
    Autoencoder,
    PixelSpace,
    check_same_autoencoder,
    describe,
    sample_posterior,
    weights_sha256,
)
from vdm.autoencoders.diffusers_vae import (
    DiffusersAutoencoder,
    diffusers_geometry,
    load_diffusers_autoencoder,
)
from vdm.autoencoders.vdm_vae import VdmAutoencoder, load_vdm_autoencoder, vdm_geometry

__all__ = [
    "Autoencoder",
    "DiffusersAutoencoder",
    "PixelSpace",
    "VdmAutoencoder",
    "check_same_autoencoder",
    "describe",
    "diffusers_geometry",
    "load_diffusers_autoencoder",
    "load_vdm_autoencoder",
    "sample_posterior",
    "vdm_geometry",
    "weights_sha256",
]
