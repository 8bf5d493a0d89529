"""A LoRA fine-tuning checkpoint's adapters in diffusers' own format, read from the checkpoint
alone: neither the base model nor its VAE or text encoder is loaded."""

from __future__ import annotations

import logging
from pathlib import Path

from vdm.errors import UserError
from vdm.files.checkpoint import load_checkpoint
from vdm.published.denoiser import import_diffusers
from vdm.published.families import family_of
from vdm.published.lora import diffusers_lora_names, save_lora

log = logging.getLogger(__name__)

PREFIX = "denoiser.transformer."  # where the Lightning module keeps the published transformer
WEIGHTS = {"ema": "state_dict", "training": "current_model_state"}


def export_lora(ckpt_path: str | Path, out: str | Path, weights: str = "ema") -> Path:
    """Write the adapters of ``ckpt_path`` to ``out/pytorch_lora_weights.safetensors``, for
    ``pipe.load_lora_weights(out)`` on the base model's diffusers pipeline.

    Args:
        ckpt_path: a checkpoint of a run with ``model=diffusers`` and ``lora`` set.
        out: the folder to write into (created).
        weights: ``ema`` (the averaged adapters, which ``vdm.sample`` draws with) or
            ``training``; a run without EMA has only its training weights.

    Returns:
        The file written.
    """
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights}: use ema or training.")
    checkpoint = load_checkpoint(ckpt_path)
    base = checkpoint.get("denoiser")
    if not base or not base.get("lora"):
        raise UserError(
            f"ckpt_path={ckpt_path} is not a LoRA fine-tuning checkpoint (a run with "
            "model=diffusers and lora set): it has no adapters to export."
        )
    state = checkpoint.get(WEIGHTS[weights]) or checkpoint["state_dict"]
    family = family_of(base["class"], f"ckpt_path={ckpt_path}")
    pipeline = getattr(import_diffusers(), family.pipeline)
    if not hasattr(pipeline, "save_lora_weights"):
        raise UserError(
            f"ckpt_path={ckpt_path}: diffusers' {family.pipeline} reads no LoRA files, so its "
            "adapters cannot be exported for it; sample the checkpoint with vdm.sample."
        )
    adapters = diffusers_lora_names(state, PREFIX)
    file = save_lora(adapters, base["lora"], pipeline, out)
    log.info(
        "Wrote %d adapter tensors (rank %s, alpha %s) to %s: %s.load_lora_weights(%r) on %s",
        len(adapters), base["lora"]["rank"], base["lora"]["alpha"], file, family.pipeline,
        str(Path(out)), base.get("path"),
    )  # fmt: skip
    return file
