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


def tiny_cogvideox_transformer(seed: int = 0, rotary: bool = False, **config):
    """A 2-layer ``CogVideoXTransformer3DModel``: 4 latent channels, 2×2 patches, text width 32,
    16-token captions (``max_text_seq_length``: its sinusoidal positions cover them); ``rotary``
    as CogVideoX-5b (heads of width 16: the 3D rotary table splits a head 1/4 : 3/8 : 3/8 into
    even parts). ``config``: more constructor arguments (``patch_size_t``, ``ofs_embed_dim``)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16 if rotary else 8, in_channels=4,
        out_channels=4, time_embed_dim=16, text_embed_dim=32, num_layers=2, sample_width=8,
        sample_height=8, sample_frames=5, patch_size=2, max_text_seq_length=TEXT_LENGTH,
        use_rotary_positional_embeddings=rotary, **config,
    )  # fmt: skip


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**TEXT_SIZES)).eval()


def tiny_cogvideox_vae():
    """A tiny ``AutoencoderKLCogVideoX`` with CogVideoX's geometry, 4×8×8 (four blocks: each but
    the last halves H and W, the first two also time; its published scaling factor), 4
    channels."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    return AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        temporal_compression_ratio=4,
    )  # fmt: skip


# CogVideoX-2b's and -5b's scheduler_config.json: v-prediction DDPM on Stable Diffusion's
# scaled-linear β, SNR divided by 3 then rescaled to zero terminal SNR, DDIM on trailing steps.
COGVIDEOX_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=3.0,
    timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
)  # fmt: skip


def tiny_cogvideox_pipeline(folder: Path, seed: int = 0) -> Path:
    """A ``CogVideoXPipeline`` as CogVideoX-2b is laid out (a 2-layer transformer without rotary
    positions, its VAE's 4×8×8 geometry, T5 with a byte-level tokenizer, CogVideoX's
    ``CogVideoXDDIMScheduler``) saved into ``folder``; ``seed`` picks the transformer."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline
    from transformers import ByT5Tokenizer

    torch.manual_seed(0)
    pipe = CogVideoXPipeline(
        tokenizer=ByT5Tokenizer(), text_encoder=tiny_t5(), vae=tiny_cogvideox_vae(),
        transformer=tiny_cogvideox_transformer(seed),
        scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER),
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def tiny_ltx_transformer(seed: int = 0):
    """A 2-layer ``LTXVideoTransformer3DModel``: 4 latent channels, 1×1×1 patches (as
    LTX-Video), text width 32."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=2, caption_channels=32,
    )  # fmt: skip


def tiny_latte_transformer(seed: int = 0, video_length: int = 2):
    """A 2-layer ``LatteTransformer3DModel`` learning its variance (8 output channels for 4 latent
    ones, as Latte-1), 2×2 patches, text width 32, ``video_length`` latent frames."""
    from diffusers import LatteTransformer3DModel

    torch.manual_seed(seed)
    return LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=2, cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2,
        norm_type="ada_norm_single", num_embeds_ada_norm=1000, caption_channels=32,
        video_length=video_length,
    )  # fmt: skip


def tiny_ltx_pipeline(folder: Path, seed: int = 0) -> Path:
    """An ``LTXPipeline`` (tiny transformer, an 8×32×32 LTX VAE of 4 channels, T5 with a
    byte-level tokenizer, LTX-Video's size-dependent flow shift) saved into ``folder``."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=1024, max_image_seq_len=4096,
        base_shift=0.95, max_shift=2.05,
    )  # fmt: skip
    pipe = LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=T5EncoderModel(T5Config(**TEXT_SIZES)).eval(),
        tokenizer=ByT5Tokenizer(), transformer=tiny_ltx_transformer(seed),
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder
