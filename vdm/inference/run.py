"""A training run's checkpoint, loaded for sampling: the model rebuilt from the config it stores,
its weights, and the run's own defaults (clip size, guidance, sampler, folder).

Example:
    >>> from vdm.inference import load_run
    >>> run = load_run("outputs/runs/<run>/checkpoints/last.ckpt")
    >>> videos = run.sample(num_samples=4)  # float (4, C, T, H, W) in [-1, 1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vdm.autoencoders import check_same_autoencoder
from vdm.data.dataset import read_video_start
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.files.checkpoint import load_checkpoint
from vdm.inference.build import (
    build_autoencoder,
    build_diffusion,
    build_model,
    build_sampler,
    build_text_encoder,
)
from vdm.inference.generation import sample_videos, sampler_name
from vdm.inference.model import DiffusionModel
from vdm.published import check_same_base
from vdm.text import check_same_text_encoder

log = logging.getLogger(__name__)

# Where the classes that configs name lived before vdm's package layout (checkpoints written
# then store these paths in their config).
MOVED_TARGETS = {
    "vdm.callbacks.": "vdm.training.callbacks.",
    "vdm.guards.": "vdm.training.guards.",
    "vdm.optim.": "vdm.training.optim.",
    "vdm.hydra_checks.": "vdm.cli.hydra_callbacks.",
}


def current_targets(config: dict) -> dict:
    """``config`` with every ``_target_`` that names a moved vdm class replaced by its new path."""

    def update(node):
        if isinstance(node, dict):
            return {k: update(v) if k != "_target_" else moved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [update(v) for v in node]
        return node

    def moved(target):
        for old, new in MOVED_TARGETS.items():
            if isinstance(target, str) and target.startswith(old):
                return new + target[len(old) :]
        return target

    return update(config)


@dataclass
class LoadedRun:
    """A trained model rebuilt from its checkpoint."""

    model: DiffusionModel  # denoiser + diffusion, in eval mode
    config: DictConfig  # the training run's resolved config
    weights: str  # "EMA" or "training" (a run without EMAWeightAveraging)
    global_step: int  # optimizer steps the weights were trained for

    def clip_shape(self, frames: int | None = None) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of the run's clips, with ``frames`` frames (None: the training
        clip length)."""
        data = self.config.data
        channels = data.get("channels", self.config.model.in_channels)
        return (channels, frames or data.clip_len, data.size, data.size)

    def guidance(self, scale: float | None = None) -> float:
        """``scale``, or by default the run's sample-video guidance for conditional models and 1
        (none) for unconditional ones."""
        if scale is not None:
            return scale
        if self.model.num_classes == 0 and not self.model.takes_text:
            return 1.0
        return OmegaConf.select(self.config, "callbacks.sample_videos.guidance_scale", default=1.0)

    def sampler_config(self, steps: int | None = None) -> DictConfig:
        """The config of the sampler the run drew its sample videos with (a flow run's is a
        flow sampler), with ``steps`` steps if given."""
        config = self.config.sampler.copy()
        if steps is not None:
            config.steps = steps
        return config

    def sampler(self, steps: int | None = None) -> SamplingLoop:
        """The sampler of :meth:`sampler_config`."""
        return build_sampler(self.sampler_config(steps))

    def sample(
        self,
        sampler: SamplingLoop | None = None,
        num_samples: int = 16,
        batch_size: int = 16,
        frames: int | None = None,
        labels: list[int] | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        precision: str = "32-true",
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
        progress: bool = True,
        prompts: list[str] | None = None,
        negative_prompt: str = "",
    ) -> torch.Tensor:
        """``num_samples`` clips at the run's size: float ``(N, C, T, H, W)`` in [-1, 1] on the CPU
        (:func:`~vdm.inference.generation.sample_videos`).

        Args:
            sampler: None = :meth:`sampler`.
            frames: frames per clip; None = the training clip length (the context's, if given).
            labels: one class per clip, for a conditional model (None: unconditional).
            guidance_scale: None = :meth:`guidance`.
            context: ``(video (N, C, T, H, W), mask (N, T))``: given frames of every clip.
            prompts: one per clip (cycled), for a text-conditional model; None: ``""``.
            negative_prompt: the unconditional half of guidance (default the null prompt).
        """
        sampler = sampler or self.sampler()
        if context is not None:
            frames = context[1].shape[1]
        clip_shape = self.clip_shape(frames)
        guidance = self.guidance(guidance_scale)
        log.info(
            "Sampling %d clips of %s (C, T, H, W) with %s, guidance %g, %s weights",
            num_samples, clip_shape, sampler_name(sampler, self.model.diffusion.num_steps),
            guidance, self.weights,
        )  # fmt: skip
        return sample_videos(
            self.model, sampler, clip_shape, labels, num_samples, batch_size,
            guidance_scale=guidance, seed=seed, precision=precision, progress=progress,
            context=context, prompts=prompts, negative_prompt=negative_prompt,
        )  # fmt: skip

    def read_clip(self, path: str | Path, max_frames: int) -> torch.Tensor:
        """The first ``max_frames`` frames of the video ``path`` as the model saw its data:
        float ``(C, T, H, W)`` in [-1, 1] at the run's size and frame stride."""
        data = self.config.data
        frames = read_video_start(
            Path(path).expanduser(), data.size, data.get("frame_stride", 1), max_frames
        )
        return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def load_run(
    ckpt_path: str | Path,
    device: torch.device | str = "cpu",
    autoencoder_path: str | None = None,
    text_encoder_path: str | None = None,
    model_path: str | None = None,
) -> LoadedRun:
    """Rebuild the denoiser and the diffusion of a training run and load its weights (the EMA
    weights when the run kept them), with the autoencoder it was trained on (its fingerprint
    must match the checkpoint's).

    Args:
        autoencoder_path: where that autoencoder lies now, if it moved (a diffusers folder or
            a vdm VAE checkpoint); None = where the run's config says.
        text_encoder_path: where its frozen text encoder (``text_encoder=t5`` or ``clip``) lies
            now, if the folder moved; None = where the run's config says.
        model_path: where the base pipeline folder of a fine-tuned published model
            (``model=diffusers``) lies now; its autoencoder and text encoder move with it where
            they were read from the same folder. None = where the run's config says.

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist.
        ValueError: it is not a vdm checkpoint, is corrupt, or its weights do not fit its config.
    """
    checkpoint = load_checkpoint(ckpt_path)
    config = OmegaConf.create(current_targets(checkpoint["hyper_parameters"]))
    if model_path:
        moved_base_model(config, model_path)
    if autoencoder_path:
        moved_autoencoder(config, autoencoder_path)
    if text_encoder_path:
        moved_text_encoder(config, text_encoder_path)
    autoencoder = build_autoencoder(config)
    check_same_autoencoder(checkpoint.get("autoencoder"), autoencoder, f"ckpt_path={ckpt_path}")
    text_encoder = build_text_encoder(config)
    where = f"ckpt_path={ckpt_path}"
    check_same_text_encoder(checkpoint.get("text_encoder"), text_encoder, where)
    denoiser = build_model(config)
    check_same_base(checkpoint.get("denoiser"), denoiser, where)
    model = DiffusionModel(denoiser, build_diffusion(config), autoencoder, text_encoder)
    # The trained weights: the denoiser's, and a text encoder's trained with it.
    state = {
        k: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(("denoiser.", "text_encoder."))
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"ckpt_path={ckpt_path}: its weights do not fit its own model config ({reason}); "
            "was it written by another version of vdm?"
        ) from None
    model.to(device).eval()
    weights = "EMA" if "current_model_state" in checkpoint else "training"
    return LoadedRun(model, config, weights, int(checkpoint.get("global_step", 0)))


def moved_base_model(config: DictConfig, path: str) -> None:
    """Point a fine-tuned published model's config at its base folder's new place ``path``,
    with the autoencoder and text encoder read from the same folder (its fingerprint, checked
    after, must still be the checkpoint's)."""
    if OmegaConf.select(config, "model.path") is None:
        raise UserError(
            f"model_path={path}: this run did not fine-tune a published model (model=diffusers): "
            "leave model_path unset."
        )
    old = config.model.path
    for key in ("model", "autoencoder", "text_encoder"):
        conf = OmegaConf.select(config, key)
        if conf is not None and conf.get("path") == old:
            conf.path = str(path)


def moved_text_encoder(config: DictConfig, path: str) -> None:
    """Point ``config``'s frozen text encoder at ``path`` (its fingerprint, checked after, must
    still be the checkpoint's: a moved folder, not another model)."""
    conf = OmegaConf.select(config, "text_encoder")
    if conf is None or "path" not in conf:
        raise UserError(
            f"text_encoder_path={path}: this run has no frozen text encoder from a folder "
            "(text_encoder=none or tiny): leave text_encoder_path unset."
        )
    conf.path = path


def moved_autoencoder(config: DictConfig, path: str) -> None:
    """Point ``config``'s autoencoder at ``path`` (its ``path`` or ``ckpt_path`` key)."""
    conf = OmegaConf.select(config, "autoencoder")
    key = next((k for k in ("path", "ckpt_path") if conf is not None and k in conf), None)
    if key is None:
        raise UserError(
            f"autoencoder_path={path}: this run was trained in pixel space (no autoencoder): "
            "leave autoencoder_path unset."
        )
    conf[key] = str(path)


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The training run folder of ``<run dir>/checkpoints/x.ckpt`` (else the file's folder)."""
    ckpt_path = Path(ckpt_path).expanduser().resolve()
    parent = ckpt_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU) or a torch device name."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
