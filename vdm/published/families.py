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


# CogVideoX's VAE downsamples 8× in space (the pipeline's vae_scale_factor_spatial, 8 without a
# VAE too): the pipeline sizes its rotary grid in pixels, height // (8 · patch_size).
COGVIDEOX_VAE_SPATIAL = 8


def cogvideox_rotary(transformer, num_frames: int, height: int, width: int, device):
    """The rotary (cos, sin) tables ``CogVideoXPipeline._prepare_rotary_positional_embeddings``
    builds for a clip of ``num_frames × height × width`` latents (1.0: a grid cropped from the
    config's sample size; 1.5, with ``patch_size_t``: a slice of the largest grid)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    config = transformer.config
    p, p_t = config.patch_size, config.patch_size_t
    # the pipeline's grid: pixels // (vae_scale_factor_spatial · patch_size)
    scale = COGVIDEOX_VAE_SPATIAL
    grid = (height * scale // (scale * p), width * scale // (scale * p))
    base_height, base_width = config.sample_height // p, config.sample_width // p
    if p_t is None:
        crops = get_resize_crop_region_for_grid(grid, base_width, base_height)
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim, crops_coords=crops, grid_size=grid,
            temporal_size=num_frames, device=device,
        )  # fmt: skip
    return get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim, crops_coords=None, grid_size=grid,
        temporal_size=(num_frames + p_t - 1) // p_t, grid_type="slice",
        max_size=(base_height, base_width), device=device,
    )  # fmt: skip


def call_cogvideox(transformer, x, timestep, tokens, mask):
    """CogVideoX 1.0 / 1.5: frames first in and out, rotary tables when the config asks for them.

    The pipeline encodes prompts with T5 without an attention mask and passes the transformer
    no mask: its padding rows are T5's states of the pad tokens, which text and video tokens
    attend to. ``text_encoder.padding=encoded`` (the finetune_cogvideox preset) gives exactly
    those rows, all marked real, and they pass unchanged; with ``zeros`` the padding rows are
    zeros here, so a prompt is the pipeline's in its real rows only."""
    config = transformer.config
    frames, (height, width) = x.shape[2], x.shape[3:]
    if config.patch_size_t and frames % config.patch_size_t:
        # The pipeline pads its latents to a multiple; a training clip must be one already.
        raise UserError(
            f"{type(transformer).__name__} takes a multiple of patch_size_t="
            f"{config.patch_size_t} latent frames, not {frames}: change data.frames."
        )
    rotary = None
    if config.use_rotary_positional_embeddings:
        rotary = cogvideox_rotary(transformer, frames, height, width, x.device)
    # The text-to-video pipeline passes no ofs; a transformer with an ofs embedding fails without
    # one, and the image-to-video pipeline, the one that runs those, passes 2.0.
    ofs = x.new_full((1,), 2.0) if config.ofs_embed_dim else None
    tokens = tokens.masked_fill(~mask[..., None], 0)
    out = transformer(
        hidden_states=x.transpose(1, 2), encoder_hidden_states=tokens, timestep=timestep,
        ofs=ofs, image_rotary_emb=rotary, return_dict=False,
    )[0]  # fmt: skip
    return out.transpose(1, 2)


# LTXPipeline's defaults without a VAE, which are LTX-Video's VAE: 8× in time, 32× in space;
# and its frame_rate=25. They scale the rotary positions (rope_interpolation_scale).
LTX_VAE_TEMPORAL = 8
LTX_VAE_SPATIAL = 32
LTX_FRAME_RATE = 25
LTX_ROPE_SCALE = (LTX_VAE_TEMPORAL / LTX_FRAME_RATE, LTX_VAE_SPATIAL, LTX_VAE_SPATIAL)


def call_ltx(transformer, x, timestep, tokens, mask):
    """LTX-Video: the clip packed into tokens ``(B, T·H·W, C·p_t·p·p)`` and unpacked back,
    the caption masked (the pipeline passes T5's attention mask, so padding rows never count),
    rotary positions scaled by the VAE's compression and the frame rate."""
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    batch, _, frames, height, width = x.shape
    # LTXPipeline._pack_latents
    packed = x.reshape(batch, -1, frames // p_t, p_t, height // p, p, width // p, p)
    packed = packed.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)
    # The pipeline passes the latent sizes as num_frames / height / width, which are the patched
    # grid's for LTX-Video's p = p_t = 1 (the only sizes that fit: in_channels counts C·p_t·p·p,
    # and vdm's x has in_channels channels).
    out = transformer(
        hidden_states=packed, encoder_hidden_states=tokens,
        # the scheduler's float32 timesteps, never cast to the model's dtype (the latents are)
        timestep=timestep.float(), encoder_attention_mask=mask,
        num_frames=frames // p_t, height=height // p, width=width // p,
        rope_interpolation_scale=LTX_ROPE_SCALE,
        return_dict=False,
    )[0]  # fmt: skip
    # LTXPipeline._unpack_latents
    out = out.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
    return out.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def call_latte(transformer, x, timestep, tokens, mask):
    """Latte: the clip as it is, temporal attention on; a model that learns its variance
    (``out_channels = 2 · in_channels``) gives the noise in its first half, which is what the
    pipeline steps its scheduler with.

    The caption: the pipeline encoding several prompts zeroes their padding rows and passes no
    mask (the transformer cannot take one: it repeats the caption per frame but not a mask), as
    here. For a single prompt it drops the padding rows instead, so its prompt sees only its
    real tokens where here it sees the zero rows too; their number is the text encoder's
    ``max_length`` (the pipeline's: 120)."""
    frames, video_length = x.shape[2], transformer.config.video_length
    if frames > 1 and frames != video_length:
        # Latte's temporal position table is fixed at the config's video_length.
        raise UserError(
            f"{type(transformer).__name__} takes {video_length} latent frames, not {frames}: "
            "change data.frames."
        )
    tokens = tokens.masked_fill(~mask[..., None], 0)
    out = transformer(
        hidden_states=x, timestep=timestep, encoder_hidden_states=tokens,
        enable_temporal_attentions=True, return_dict=False,
    )[0]  # fmt: skip
    channels = x.shape[1]
    return out[:, :channels] if out.shape[1] == 2 * channels else out


FAMILIES = (
    Family("wan", ("WanTransformer3DModel",), call_wan, "WanPipeline"),
    Family("cogvideox", ("CogVideoXTransformer3DModel",), call_cogvideox, "CogVideoXPipeline"),
    Family("ltx", ("LTXVideoTransformer3DModel",), call_ltx, "LTXPipeline"),
    # LattePipeline has no LoRA loader: Latte's adapters train, but do not export to diffusers
    Family("latte", ("LatteTransformer3DModel",), call_latte, "LattePipeline"),
)


def family_of(class_name: str, where: str) -> Family:
    """The family of a diffusers transformer class, or one line naming the supported ones."""
    for family in FAMILIES:
        if class_name in family.classes:
            return family
    supported = ", ".join(c for f in FAMILIES for c in f.classes)
    raise UserError(f"{where} holds a {class_name}: vdm fine-tunes {supported}.")
