"""Published diffusers video transformers (Wan, CogVideoX, LTX-Video, Latte) as vdm denoisers,
from a local pipeline folder, with LoRA adapters through peft. Nothing here imports Lightning or
Hydra, and nothing is downloaded: the folder is the model."""

from vdm.published.denoiser import (
    DiffusersDenoiser,
    check_same_base,
    load_diffusers_denoiser,
)
from vdm.published.families import FAMILIES, Family, family_of
from vdm.published.folder import scheduler_objective, transformer_folder

__all__ = [
    "FAMILIES",
    "DiffusersDenoiser",
    "Family",
    "check_same_base",
    "family_of",
    "load_diffusers_denoiser",
    "scheduler_objective",
    "transformer_folder",
]
