"""How each family of published video transformers is called: vdm's denoiser interface has one
layout (``x (B, C, T, H, W)``, a time per clip, caption tokens and their mask); each diffusers
transformer class wants its own (frames first, packed tokens, a mask or zero rows, rotary
positions). A :class:`Family` holds that translation and nothing else, so a new family is one
entry here and one test against the diffusers model called directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vdm.errors import UserError

# call(transformer, x (B, C, T, H, W), timestep (B,), tokens (B, L, D), mask (B, L) bool)
#   -> the transformer's prediction (B, C_out, T, H, W)
Call = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# The attention projections of diffusers' Attention blocks, the LoRA targets of finetrainers and
# of diffusers' training examples for every family below.
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class Family:
    """One family of diffusers video transformers.

    Attributes:
        name: the family's short name (``wan``), as the presets ``finetune_<name>`` use it.
        classes: the diffusers class names it covers.
        call: runs the transformer on vdm's layout (see :data:`Call`).
        pipeline: the diffusers pipeline class that samples it (and reads its LoRA files).
        lora_targets: the module names LoRA adapts by default.

    The time is passed as vdm's processes give it, which is what these transformers take: a
    flow model ``σ·1000`` (float), a DDPM model its step index.
    """

    name: str
    classes: tuple[str, ...]
    call: Call
    pipeline: str
    lora_targets: tuple[str, ...] = ATTENTION_PROJECTIONS


def call_wan(transformer, x, timestep, tokens, mask):
    """Wan 2.1 / 2.2: the clip as it is; the caption's padding rows are zeros, not masked (the
    pipeline pads the real rows with zeros and passes no mask: vdm's text encoders do the
    same)."""
    tokens = tokens.masked_fill(~mask[..., None], 0)
    return transformer(
        hidden_states=x, timestep=timestep, encoder_hidden_states=tokens, return_dict=False
    )[0]


FAMILIES = (Family("wan", ("WanTransformer3DModel",), call_wan, "WanPipeline"),)


def family_of(class_name: str, where: str) -> Family:
    """The family of a diffusers transformer class, or one line naming the supported ones."""
    for family in FAMILIES:
        if class_name in family.classes:
            return family
    supported = ", ".join(c for f in FAMILIES for c in f.classes)
    raise UserError(f"{where} holds a {class_name}: vdm fine-tunes {supported}.")
