"""LoRA adapters on a diffusers transformer, through peft (``pip install 'vdm[finetune]'``):
adding them, the names of what trains, and writing them in diffusers' own LoRA format."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from vdm.errors import UserError

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's name for a model's single adapter
LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights reads


def import_peft():
    try:
        import peft  # optional: runs without LoRA never import it
    except ImportError:
        raise UserError(
            "lora=... needs the peft package: pip install 'vdm[finetune]' (or pip install peft); "
            "lora=null fine-tunes every weight without it."
        ) from None
    return peft


def lora_config(rank: int, alpha: float | None, dropout: float, target_modules) -> object:
    """peft's ``LoraConfig`` for vdm's ``lora.*`` keys (``alpha`` None: the rank, scale 1)."""
    peft = import_peft()
    if rank < 1:
        raise UserError(f"lora.rank={rank}: give a rank >= 1 (or lora=null: full fine-tuning).")
    if not 0 <= dropout < 1:
        raise UserError(f"lora.dropout={dropout}: must be in [0, 1).")
    return peft.LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=float(dropout),
        target_modules=list(target_modules),
        init_lora_weights=True,  # B = 0: the adapted model starts as the base model exactly
    )


def add_lora(transformer: nn.Module, config) -> None:
    """Freeze ``transformer`` and add trainable float32 LoRA adapters to its target modules."""
    transformer.requires_grad_(False)
    try:
        if hasattr(transformer, "add_adapter"):
            transformer.add_adapter(config)
        else:
            # Latte's transformer lacks diffusers' PeftAdapterMixin: what its add_adapter does
            # (the adapter named ADAPTER is the active one).
            config.base_model_name_or_path = None
            import_peft().inject_adapter_in_model(config, transformer, ADAPTER)
    except ValueError as error:  # peft: no module matched the targets
        reason = str(error).splitlines()[0]
        raise UserError(
            f"lora.target_modules={list(config.target_modules)}: {reason} Name modules of "
            f"{type(transformer).__name__} (e.g. to_q, to_k, to_v, to_out.0)."
        ) from None
    for name, parameter in transformer.named_parameters():
        if "lora_" in name:
            # Adapters train in float32 even on a bfloat16 base: Adam's small updates survive.
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)


def diffusers_lora_names(state_dict: dict[str, torch.Tensor], prefix: str) -> dict:
    """The adapters of a vdm state dict (``<prefix>blocks.0.attn1.to_q.lora_A.default.weight``)
    under diffusers' LoRA names (``blocks.0.attn1.to_q.lora_A.weight``), as float32 on the CPU."""
    marker = f".{ADAPTER}."
    return {
        key[len(prefix) :].replace(marker, "."): value.detach().float().cpu().contiguous()
        for key, value in state_dict.items()
        if key.startswith(prefix) and ".lora_" in key
    }


def save_lora(
    adapters: dict[str, torch.Tensor], settings: dict, pipeline_class, out: str | Path
) -> Path:
    """Write ``adapters`` (diffusers' names) to ``out/pytorch_lora_weights.safetensors`` with the
    pipeline class's own ``save_lora_weights``, their rank, alpha and targets as its metadata
    (so ``pipe.load_lora_weights(out)`` scales them as vdm trained them)."""
    if not adapters:
        raise UserError("The checkpoint holds no LoRA adapters (it was trained with lora=null).")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    config = lora_config(**settings).to_dict()
    metadata = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    pipeline_class.save_lora_weights(
        out,
        transformer_lora_layers=adapters,
        transformer_lora_adapter_metadata=metadata,
        safe_serialization=True,
    )
    return out / LORA_FILE
