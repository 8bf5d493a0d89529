"""Each family's call against its diffusers transformer called the way its pipeline calls it
(the pipeline's own helpers where they run without a pipeline), on tiny models saved to disk
and loaded through vdm.published."""

from types import SimpleNamespace

import pytest
import torch
from tiny_pipelines import (
    tiny_cogvideox_transformer,
    tiny_latte_transformer,
    tiny_ltx_transformer,
    tiny_wan_transformer,
)

from vdm.errors import UserError
from vdm.models.text_embedding import TextEmbedding
from vdm.published import family_of, load_diffusers_denoiser

diffusers = pytest.importorskip("diffusers")

B, C, T, H, W = 2, 4, 2, 8, 8
FLOW_T = torch.tensor([937.5, 125.0])  # σ·1000, as flow pipelines pass it
DDPM_T = torch.tensor([999, 250])  # step indices, as DDPM pipelines pass them


def caption(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 16-token captions of width 32, the second 9 tokens long (zero rows after)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 16, dtype=torch.bool)
    mask[1, 9:] = False
    tokens = torch.randn(B, 16, 32, generator=g).masked_fill(~mask[..., None], 0)
    return tokens, mask


def ref_wan(m, x, t, tokens, mask):
    return m(hidden_states=x, timestep=t, encoder_hidden_states=tokens, return_dict=False)[0]


def ref_cogvideox(m, x, t, tokens, mask):
    # CogVideoXPipeline: latents (B, T, C, H, W); rotary tables from pixel sizes (VAE: 8×);
    # CogVideoXImageToVideoPipeline passes ofs 2.0 to transformers with an ofs embedding.
    rotary = None
    if m.config.use_rotary_positional_embeddings:
        pipe = SimpleNamespace(vae_scale_factor_spatial=8, transformer=m)
        rotary = diffusers.CogVideoXPipeline._prepare_rotary_positional_embeddings(
            pipe, H * 8, W * 8, T, x.device
        )
    ofs = x.new_full((1,), 2.0) if m.config.ofs_embed_dim else None
    out = m(hidden_states=x.permute(0, 2, 1, 3, 4), encoder_hidden_states=tokens, timestep=t,
            ofs=ofs, image_rotary_emb=rotary, return_dict=False)[0]  # fmt: skip
    return out.permute(0, 2, 1, 3, 4)


def ref_ltx(m, x, t, tokens, mask):
    # LTXPipeline: packed latents, T5's mask, latent sizes, VAE ratios 8 / 32 at 25 fps.
    pipe = diffusers.LTXPipeline
    packed = pipe._pack_latents(x, m.config.patch_size, m.config.patch_size_t)
    out = m(hidden_states=packed, encoder_hidden_states=tokens, timestep=t,
            encoder_attention_mask=mask, num_frames=T, height=H, width=W,
            rope_interpolation_scale=(8 / 25, 32, 32), return_dict=False)[0]  # fmt: skip
    return pipe._unpack_latents(out, T, H, W, m.config.patch_size, m.config.patch_size_t)


def ref_latte(m, x, t, tokens, mask):
    # LattePipeline with several prompts (mask_feature): padding rows zeroed, no mask; the
    # noise is the first half of a learned-sigma output.
    out = m(hidden_states=x, encoder_hidden_states=tokens * mask[..., None], timestep=t,
            enable_temporal_attentions=True, return_dict=False)[0]  # fmt: skip
    return out.chunk(2, dim=1)[0]


CASES = {
    "wan": (tiny_wan_transformer, ref_wan, FLOW_T),
    "cogvideox": (tiny_cogvideox_transformer, ref_cogvideox, DDPM_T),
    "cogvideox-rotary": (lambda: tiny_cogvideox_transformer(rotary=True), ref_cogvideox, DDPM_T),
    "cogvideox-1.5-ofs": (
        lambda: tiny_cogvideox_transformer(rotary=True, patch_size_t=2, ofs_embed_dim=16),
        ref_cogvideox,
        DDPM_T,
    ),
    "ltx": (tiny_ltx_transformer, ref_ltx, FLOW_T),
    "latte": (tiny_latte_transformer, ref_latte, DDPM_T),
}


def saved(tmp_path, build):
    """A folder holding ``transformer/`` (what load_diffusers_denoiser reads) and the model."""
    model = build().eval()
    model.save_pretrained(tmp_path / "transformer")
    return str(tmp_path), model


@pytest.mark.parametrize("case", CASES)
def test_call_matches_pipeline(tmp_path, case):
    build, reference, t = CASES[case]
    folder, model = saved(tmp_path, build)
    denoiser = load_diffusers_denoiser(folder).eval()
    x = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(0))
    tokens, mask = caption()
    text = TextEmbedding(tokens, mask, tokens.mean(1))
    with torch.no_grad():
        got = denoiser(x, t, text=text)
        want = reference(model, x, t, tokens, mask)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_unknown_class_names_supported_ones():
    with pytest.raises(UserError) as error:
        family_of("SomethingElse3DModel", "model.path=X")
    for name in ("WanTransformer3DModel", "CogVideoXTransformer3DModel",
                 "LTXVideoTransformer3DModel", "LatteTransformer3DModel"):  # fmt: skip
        assert name in str(error.value)


@pytest.mark.parametrize("case", ["wan", "cogvideox-rotary", "ltx", "latte"])
def test_lora_attaches_and_starts_as_base(tmp_path, case):
    peft = pytest.importorskip("peft")
    build, _, t = CASES[case]
    folder, _ = saved(tmp_path, build)
    base = load_diffusers_denoiser(folder).eval()
    adapted = load_diffusers_denoiser(folder, lora={"rank": 4, "alpha": 4, "dropout": 0.0}).eval()
    params = dict(adapted.transformer.named_parameters())
    for target in adapted.family.lora_targets:
        assert any(f"{target}.lora_A" in name for name in params), target
    assert all(p.requires_grad == ("lora_" in name) for name, p in params.items())
    x = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(0))
    tokens, mask = caption()
    text = TextEmbedding(tokens, mask, tokens.mean(1))
    with torch.no_grad():
        # B = 0 at init: the adapters add exact zeros
        torch.testing.assert_close(adapted(x, t, text=text), base(x, t, text=text), atol=0, rtol=0)
    assert peft.get_peft_model_state_dict(adapted.transformer)  # peft finds the adapters


@pytest.mark.parametrize(
    "build, frames",
    [(lambda: tiny_cogvideox_transformer(rotary=True, patch_size_t=2), 3),  # not a multiple of 2
     (tiny_latte_transformer, 3)],  # not its video_length (2)
)  # fmt: skip
def test_frame_count_the_transformer_cannot_take(build, frames):
    model = build().eval()
    family = family_of(type(model).__name__, "model.path=X")
    tokens, mask = caption()
    with pytest.raises(UserError, match="data.frames"):
        family.call(model, torch.zeros(B, C, frames, H, W), DDPM_T, tokens, mask)
