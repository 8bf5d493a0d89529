"""Denoisers: ``forward(x (B, C, T, H, W), t (B,), labels (B,) | None) -> (B, C, T, H, W)``."""

from vdm.models.transformer import SpaceTimeTransformer
from vdm.models.unet3d import UNet3D

__all__ = ["SpaceTimeTransformer", "UNet3D"]
