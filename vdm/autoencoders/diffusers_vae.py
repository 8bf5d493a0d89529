"""A published autoencoder saved by diffusers (``save_pretrained``) behind vdm's interface: the
class is read from the folder's ``config.json``; an image VAE (``AutoencoderKL``) is applied to
every frame, a video VAE (``AutoencoderKLWan``, ``...CogVideoX``, ``...LTXVideo``,
``...HunyuanVideo``) to the clip. Nothing is downloaded: the folder is the model.

CogVideoX decodes an even number of latent frames ``T'`` to ``4·T'`` frames, not
``1 + 4·(T' - 1)``: it takes ``1 + 8·k`` frames (an odd number of latent frames). A
timestep-conditioned decoder (LTX-Video 0.9.1 on) decodes at timestep 0, its pipelines' default."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from vdm.autoencoders.base import (
    Autoencoder,
    check_geometry,
    frame_count_near,
    latent_frame_count,
)
from vdm.autoencoders.dtypes import torch_dtype
from vdm.errors import MissingFileError, UserError
from vdm.files.verify import files_sha256

log = logging.getLogger(__name__)

KEY = "autoencoder.path"
IMAGE_VAES = ("AutoencoderKL",)  # applied frame by frame
ODD_LATENT_FRAMES = ("AutoencoderKLCogVideoX",)  # decodes latent frames in pairs after the first
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def model_folder(path: str | Path) -> tuple[Path, dict]:
    """The folder holding the autoencoder's ``config.json`` (``path`` or its ``vae/``
    sub-folder, as in a pipeline folder) and that config."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MissingFileError(
            f"{KEY}={root} is not a folder: give the folder a diffusers autoencoder was saved "
            "to (save_pretrained), or a pipeline folder with a vae/ sub-folder."
        )
    for folder in (root, root / "vae"):
        config_file = folder / "config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise UserError(f"{KEY}: {config_file} is not readable JSON ({error}).") from None
            if str(config.get("_class_name", "")).startswith("Autoencoder"):
                return folder, config
    raise UserError(
        f"{KEY}={root} holds no diffusers autoencoder (a config.json whose _class_name is an "
        "Autoencoder..., here or in vae/): point it at the VAE's folder."
    )


def weights_digest(folder: Path) -> str:
    """SHA-256 over the folder's weight files (names and bytes): the same model wherever it lies
    and whatever dtype it is loaded in."""
    files = sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise UserError(f"{KEY}={folder} has a config.json but no weight files (*.safetensors).")
    return files_sha256(files)


def factors(vae: torch.nn.Module) -> tuple[int, int]:
    """``(spatial, temporal)`` compression of a diffusers autoencoder: its own attributes where
    it sets them, else its config (Wan: ``scale_factor_*``; image VAEs: one halving per block
    after the first, no temporal compression)."""
    config, own = vae.config, vars(vae)  # not getattr: diffusers warns on config fallbacks
    spatial = (
        own.get("spatial_compression_ratio")
        or config.get("spatial_compression_ratio")
        or config.get("scale_factor_spatial")
        or 2 ** (len(config.get("block_out_channels", [0])) - 1)
    )
    temporal = (
        own.get("temporal_compression_ratio")
        or config.get("temporal_compression_ratio")
        or config.get("scale_factor_temporal")
        or 1
    )
    return int(spatial), int(temporal)


def normalisation(vae: torch.nn.Module) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """``(shift, scale)`` as the model's pipelines apply them: ``(z - mean) · scaling / std`` with
    per-channel ``latents_mean`` / ``latents_std`` (config or buffers) where it has them, else
    ``(z - shift_factor) · scaling_factor``."""
    config = vae.config
    scaling = config.get("scaling_factor") or 1.0
    mean = config.get("latents_mean")
    std = config.get("latents_std")
    buffers = dict(vae.named_buffers(recurse=False))
    if mean is None and "latents_mean" in buffers:  # LTX-Video keeps them as buffers
        mean, std = buffers["latents_mean"], buffers["latents_std"]
    if mean is not None and std is not None:
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        return mean, scaling / std
    return float(config.get("shift_factor") or 0.0), float(scaling)


def diffusers_class(folder: Path, config: dict):
    """The diffusers class a saved config names."""
    try:
        import diffusers  # optional until used: pixel-space runs never import it
    except ImportError:
        raise UserError(
            "autoencoder=diffusers needs the diffusers package: pip install 'vdm[latent]' "
            "(or pip install diffusers)."
        ) from None

    cls = getattr(diffusers, config["_class_name"], None)
    if cls is None:
        raise UserError(
            f"{KEY}={folder}: diffusers {diffusers.__version__} has no class "
            f"{config['_class_name']}: upgrade diffusers (pip install -U diffusers)."
        )
    return cls


def diffusers_geometry(path: str | None) -> dict:
    """``latent_channels``, ``spatial_factor``, ``temporal_factor``, ``causal`` of the diffusers
    autoencoder in ``path``, from its config alone (built on the meta device: no weights read)."""
    if not path:
        raise UserError(f"autoencoder=diffusers needs {KEY}=DIR (a folder saved by diffusers).")
    folder, config = model_folder(path)
    cls = diffusers_class(folder, config)
    with torch.device("meta"):
        vae = cls.from_config(config)
    spatial, temporal = factors(vae)
    channels = vae.config.get("latent_channels") or vae.config.get("z_dim")
    return {"latent_channels": int(channels), "spatial_factor": spatial,
            "temporal_factor": temporal, "causal": temporal > 1}  # fmt: skip


class DiffusersAutoencoder(Autoencoder):
    """A diffusers autoencoder; image VAEs run on ``frame_chunk`` frames at a time."""

    def __init__(
        self, vae, fingerprint: dict, dtype: torch.dtype, batch_chunk: int, frame_chunk: int
    ):
        spatial, temporal = factors(vae)
        shift, scale = normalisation(vae)
        self.name = type(vae).__name__
        self.per_frame = self.name in IMAGE_VAES
        self.odd_latent_frames = self.name in ODD_LATENT_FRAMES and temporal > 1
        self.timestep_conditioned = bool(vae.config.get("timestep_conditioning"))
        self.frame_chunk = frame_chunk
        channels = vae.config.get("latent_channels") or vae.config.get("z_dim")
        super().__init__(
            vae, int(channels), spatial, temporal, causal=temporal > 1, shift=shift, scale=scale,
            fingerprint=fingerprint, dtype=dtype, batch_chunk=batch_chunk,
        )  # fmt: skip

    def latent_frames_for(self, frames: int) -> int:
        """As :meth:`Autoencoder.latent_frames_for`; CogVideoX also refuses an even number of
        latent frames (its decoder would give ``temporal_factor·T'`` frames)."""
        f = 2 * self.temporal_factor
        if self.odd_latent_frames and latent_frame_count(frames, f, causal=True) is None:
            raise UserError(
                f"{frames} frames: {self.name} (temporal factor {self.temporal_factor}) decodes an "
                f"odd number of latent frames only, so it takes 1 + {f}·k frames (e.g. "
                f"{frame_count_near(frames, f, causal=True)}) per clip: change data.clip_len "
                "(or frames=)."
            )
        return super().latent_frames_for(frames)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """The model's video of ``z``; a timestep-conditioned decoder at timestep 0, as its
        pipelines decode by default (``decode_timestep=0``: no noise mixed in)."""
        if self.timestep_conditioned:
            return self.network.decode(z, temb=z.new_zeros(len(z))).sample
        return self.network.decode(z).sample

    def _per_frame(self, x: torch.Tensor, fn) -> list[torch.Tensor]:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return [fn(chunk) for chunk in frames.split(self.frame_chunk)], b, t

    @staticmethod
    def _as_video(parts: list[torch.Tensor], b: int, t: int) -> torch.Tensor:
        frames = torch.cat(parts)
        return frames.view(b, t, *frames.shape[1:]).transpose(1, 2)

    def raw_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.per_frame:
            dist = self.network.encode(video).latent_dist
            return dist.mean, dist.std
        parts, b, t = self._per_frame(video, lambda x: self.network.encode(x).latent_dist)
        means = self._as_video([d.mean for d in parts], b, t)
        return means, self._as_video([d.std for d in parts], b, t)

    def raw_decode(self, z: torch.Tensor) -> torch.Tensor:
        if not self.per_frame:
            return self._decode(z)
        parts, b, t = self._per_frame(z, self._decode)
        return self._as_video(parts, b, t)


def load_diffusers_autoencoder(
    path: str,
    dtype: str = "float32",
    batch_chunk: int = 4,
    frame_chunk: int = 16,
    tiling: bool = False,
    **geometry,
) -> DiffusersAutoencoder:
    """The diffusers autoencoder saved in ``path`` (``autoencoder=diffusers``).

    Args:
        path: its folder, or a pipeline folder with ``vae/``.
        dtype: float32 | bfloat16 | float16.
        batch_chunk: clips per encode / decode call.
        frame_chunk: frames per call of an image VAE.
        tiling: decode in spatial tiles where the model supports it (large frames).
        geometry: ``latent_channels`` etc. from the config, checked against the model.
    """
    if not path:
        raise UserError(f"autoencoder=diffusers needs {KEY}=DIR (a folder saved by diffusers).")
    folder, config = model_folder(path)
    name = config["_class_name"]
    cls = diffusers_class(folder, config)
    fingerprint = {"kind": "diffusers", "class": name, "sha256": weights_digest(folder)}
    vae = cls.from_pretrained(folder, torch_dtype=torch_dtype(dtype, "autoencoder.dtype"))
    if tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    log.info("Loaded %s from %s (%s)", name, folder, dtype)
    autoencoder = DiffusersAutoencoder(
        vae, fingerprint, torch_dtype(dtype, "autoencoder.dtype"), batch_chunk, frame_chunk
    )
    check_geometry(autoencoder, geometry)
    return autoencoder
