"""The denoisers compared in bench/denoisers.py, each behind ``forward(x, t) -> prediction``.

vdm's models against the ones researchers would otherwise pick: diffusers' UNet3DConditionModel
and LatteTransformer3DModel, and video-diffusion-pytorch's Unet3D. Configurations are chosen so
that each vdm model and its anchor have the same parameter count within ±15% (the benchmark
prints the counts). The anchors are unconditional here, like vdm's: the diffusers models get a
single zero "text" token, which costs almost nothing.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import torch
from torch import nn

# What each worker builds: name → (family, builder(frames, size) → module). Pairs share a family.
UNET, TRANSFORMER = "3D U-Net", "space-time transformer"


class Wrapped(nn.Module):
    """A denoiser with vdm's call ``forward(x (B, C, T, H, W), t (B,)) -> (B, C, T, H, W)``."""

    def __init__(self, model: nn.Module, call: Callable, config: dict) -> None:
        super().__init__()
        self.model, self.call, self.config = model, call, config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.call(self.model, x, t)


def vdm_unet3d(frames: int, size: int) -> Wrapped:
    from vdm.models import UNet3D

    config = dict(base_channels=56, channel_mult=[1, 2, 3], num_res_blocks=1, heads=4,
                  attention_resolutions=[4])  # fmt: skip
    return Wrapped(UNet3D(**config), lambda m, x, t: m(x, t), config)


def vdm_transformer(frames: int, size: int) -> Wrapped:
    from vdm.models import SpaceTimeTransformer

    config = dict(patch_size=2, hidden_size=192, depth=7, heads=4)
    return Wrapped(SpaceTimeTransformer(**config), lambda m, x, t: m(x, t), config)


def diffusers_unet3d(frames: int, size: int) -> Wrapped:
    from diffusers import UNet3DConditionModel

    config = dict(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(48, 96, 128),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=16,
        norm_num_groups=16,
    )
    model = UNet3DConditionModel(**config)
    context = torch.zeros(1, 1, config["cross_attention_dim"])

    def call(m, x, t):
        return m(x, t, encoder_hidden_states=context.expand(len(x), -1, -1).to(x.dtype)).sample

    return Wrapped(model, call, config)


def diffusers_latte(frames: int, size: int) -> Wrapped:
    from diffusers import LatteTransformer3DModel

    config = dict(
        num_attention_heads=4,
        attention_head_dim=48,
        in_channels=3,
        out_channels=3,
        num_layers=5,
        cross_attention_dim=192,
        sample_size=size,
        patch_size=2,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        caption_channels=32,
        video_length=frames,
    )
    model = LatteTransformer3DModel(**config)
    context = torch.zeros(1, 1, config["caption_channels"])

    def call(m, x, t):
        context_ = context.expand(len(x), -1, -1).to(x.dtype)
        return m(x, timestep=t, encoder_hidden_states=context_, return_dict=False)[0]

    return Wrapped(model, call, config)


def import_video_diffusion_pytorch():
    """video_diffusion_pytorch imports torchvision at module top for its GIF helpers only, and
    PyPI's torchvision does not load beside this machine's CPU torch: a stand-in is enough."""
    if "torchvision" not in sys.modules:
        stand_in = types.ModuleType("torchvision")
        stand_in.transforms = types.ModuleType("torchvision.transforms")
        stand_in.utils = types.ModuleType("torchvision.utils")
        stand_in.transforms.ToTensor = lambda: None  # evaluated as a default argument at import
        sys.modules.update(
            {"torchvision": stand_in, "torchvision.transforms": stand_in.transforms,
             "torchvision.utils": stand_in.utils}
        )  # fmt: skip
    import video_diffusion_pytorch

    return video_diffusion_pytorch


def vdp_unet3d(frames: int, size: int) -> Wrapped:
    vdp = import_video_diffusion_pytorch()
    config = dict(dim=56, dim_mults=(1, 2, 4), channels=3, attn_heads=4, attn_dim_head=32)
    return Wrapped(vdp.Unet3D(**config), lambda m, x, t: m(x, t.float()), config)


MODELS: dict[str, tuple[str, Callable[[int, int], Wrapped]]] = {
    "vdm UNet3D": (UNET, vdm_unet3d),
    "diffusers UNet3DConditionModel": (UNET, diffusers_unet3d),
    "video-diffusion-pytorch Unet3D": (UNET, vdp_unet3d),
    "vdm SpaceTimeTransformer": (TRANSFORMER, vdm_transformer),
    "diffusers LatteTransformer3DModel": (TRANSFORMER, diffusers_latte),
}
# (vdm model, anchor) pairs: the ratio columns and the targets compare these.
PAIRS = [
    ("vdm UNet3D", "diffusers UNet3DConditionModel"),
    ("vdm UNet3D", "video-diffusion-pytorch Unet3D"),
    ("vdm SpaceTimeTransformer", "diffusers LatteTransformer3DModel"),
]


def import_all() -> None:
    """Import every library a worker may use, so that each worker's baseline memory is the
    same whichever model it measures."""
    import diffusers  # noqa: F401

    import vdm.models  # noqa: F401

    import_video_diffusion_pytorch()
