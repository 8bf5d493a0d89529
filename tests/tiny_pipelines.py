"""Tiny diffusers pipeline folders built from constructor arguments and saved with
``save_pretrained`` into a temporary folder: nothing is downloaded. Widths are small enough that a
pipeline call takes well under a second on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_SIZES = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
TEXT_LENGTH = 16  # tokens a prompt is padded to, in the pipelines and in vdm's encoder


def tiny_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**TEXT_SIZES)).eval()


def tiny_wan_transformer(seed: int = 0):
    """A 2-layer ``WanTransformer3DModel``: 4 latent channels, 2×2 patches, text width 32."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    )  # fmt: skip


def tiny_wan_vae():
    """A tiny causal ``AutoencoderKLWan`` (4×8×8, 4 channels, per-channel mean and std)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.0, 4.0],
    )  # fmt: skip


def tiny_wan_pipeline(folder: Path, seed: int = 0, shift: float = 3.0) -> Path:
    """A ``WanPipeline`` (tiny transformer, VAE, UMT5 with a byte-level tokenizer, flow-matching
    Euler scheduler with ``shift``) saved into ``folder``; ``seed`` picks the transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import ByT5Tokenizer

    torch.manual_seed(0)
    pipe = WanPipeline(
        tokenizer=ByT5Tokenizer(), text_encoder=tiny_umt5(), vae=tiny_wan_vae(),
        transformer=tiny_wan_transformer(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder
