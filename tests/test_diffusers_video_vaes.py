"""The video VAEs of diffusers beyond Wan (CogVideoX, LTX-Video, HunyuanVideo) through vdm's
loader: tiny models built from constructor arguments and saved as the published ones are, checked
against what their configs imply, against their own encode / decode and against the
normalisation their diffusers pipelines apply."""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from vdm.autoencoders import diffusers_geometry, load_diffusers_autoencoder
from vdm.errors import UserError

LTX_MEAN = [0.5, -0.25, 0.125, -1.0]
LTX_STD = [2.0, 0.5, 4.0, 1.5]


@dataclass(frozen=True)
class Family:
    """A tiny model of one family and the clips it takes."""

    build: Callable[[], torch.nn.Module]  # the diffusers model, seeded
    subfolder: str  # where it is saved: "vae" as in a pipeline folder, "" as a bare VAE
    frames: int  # a clip length on the family's frame rule
    size: int  # a frame size its spatial factor divides
    off_rule: tuple[int, ...]  # clip lengths it cannot take


def tiny_cogvideox():
    """Three blocks: every block but the last halves H and W, the first log2(4) = 2 of them also
    halve time (4×4×4); the published scaling factor, no shift."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    return AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        temporal_compression_ratio=4,
    )  # fmt: skip


def tiny_ltx(timestep_conditioning: bool = False):
    """LTX-Video's layout (4×4 patches, three spatio-temporal halvings: 32×32×8) with 8 channels;
    per-channel ``latents_mean`` / ``latents_std`` buffers set away from 0 / 1 and a scaling
    factor other than 1, so that every part of its normalisation shows."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), scaling_factor=0.5,
        timestep_conditioning=timestep_conditioning,
    )  # fmt: skip
    vae.latents_mean.copy_(torch.tensor(LTX_MEAN))
    vae.latents_std.copy_(torch.tensor(LTX_STD))
    return vae


def tiny_hunyuan():
    """HunyuanVideo's four blocks (8×8×4: H and W halve in the first three, time in the middle
    two) with 8 channels; its published scaling factor, no shift."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    return AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4
    )


FAMILIES = {
    # CogVideoX decodes latent frames in pairs after the first: 1 + 8k frames, 5 is refused.
    "cogvideox": Family(tiny_cogvideox, "vae", frames=9, size=16, off_rule=(8, 5, 13)),
    "ltx": Family(tiny_ltx, "", frames=9, size=64, off_rule=(8, 5)),
    # LTX-Video 0.9.1 on: a decoder conditioned on a timestep.
    "ltx_timestep": Family(lambda: tiny_ltx(True), "", frames=9, size=64, off_rule=(10,)),
    "hunyuan": Family(tiny_hunyuan, "vae", frames=9, size=16, off_rule=(8, 3)),
}


def expected_geometry(config: dict) -> tuple[int, int, int, bool]:
    """``(latent_channels, spatial, temporal, causal)`` as each family's config implies them:
    2 ** the number of halvings (times LTX's patch size), counted from the config alone."""
    name, n = config["_class_name"], len(config["block_out_channels"])
    if name == "AutoencoderKLCogVideoX":
        time_levels = int(math.log2(config["temporal_compression_ratio"]))
        spatial, temporal = 2 ** (n - 1), 2 ** min(time_levels, n - 1)
    elif name == "AutoencoderKLLTXVideo":
        halvings = sum(config["spatio_temporal_scaling"])
        spatial, temporal = config["patch_size"] * 2**halvings, config["patch_size_t"] * 2**halvings
    elif name == "AutoencoderKLHunyuanVideo":
        space_levels = int(math.log2(config["spatial_compression_ratio"]))
        time_levels = int(math.log2(config["temporal_compression_ratio"]))
        spatial = 2 ** sum(i < space_levels for i in range(n))
        temporal = 2 ** sum(n - 1 - time_levels <= i < n - 1 for i in range(n))
    else:
        raise AssertionError(name)
    return config["latent_channels"], spatial, temporal, temporal > 1


def expected_normalisation(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)`` per channel as the family's pipelines normalise: CogVideoX and
    HunyuanVideo ``z · scaling_factor``; LTX ``(z - latents_mean) · scaling_factor /
    latents_std`` with the values the test wrote into its buffers (its config has none: a loader
    reading the config alone would use 0 and 1)."""
    c = config["latent_channels"]
    if config["_class_name"] == "AutoencoderKLLTXVideo":
        return torch.tensor(LTX_MEAN), config["scaling_factor"] / torch.tensor(LTX_STD)
    assert config.get("shift_factor") is None and config.get("latents_mean") is None
    return torch.zeros(c), torch.full((c,), config["scaling_factor"])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    """``(family, folder given to vdm, config.json, the model itself in eval mode)``."""
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = family.build().eval()
    model.save_pretrained(root / family.subfolder)
    config = json.loads((root / family.subfolder / "config.json").read_text())
    return family, root, config, model


def clip(b: int, t: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, size, size, generator=g) * 2 - 1


def raw_decode(model, z: torch.Tensor) -> torch.Tensor:
    """The model's own decode as its pipeline calls it (LTX 0.9.1 on: at ``decode_timestep=0``)."""
    if model.config.get("timestep_conditioning"):
        return model.decode(z, temb=torch.zeros(len(z))).sample
    return model.decode(z).sample


def test_the_geometry_is_what_the_config_implies(saved):
    """Factors read wrongly would give the denoiser latents of the wrong shape; the config-only
    path (checks before any weights load) must agree with the loaded model."""
    _, root, config, _ = saved
    ae = load_diffusers_autoencoder(str(root))
    expected = expected_geometry(config)
    assert (ae.latent_channels, ae.spatial_factor, ae.temporal_factor, ae.causal) == expected
    channels, spatial, temporal, causal = expected
    assert diffusers_geometry(str(root)) == {"latent_channels": channels,
        "spatial_factor": spatial, "temporal_factor": temporal, "causal": causal}  # fmt: skip


def test_latents_have_the_model_s_own_shape_and_decode_to_the_clip_s(saved):
    """``latent_shape`` is what the sampler allocates: it must be the shape the model's own
    encode gives (and the config implies), and decoding must give back the clip's T, H, W."""
    family, root, config, model = saved
    ae = load_diffusers_autoencoder(str(root))
    x = clip(2, family.frames, family.size)
    latents = ae.encode(x)
    with torch.no_grad():
        own = model.encode(x).latent_dist.mean.shape
    channels, spatial, temporal, _ = expected_geometry(config)
    implied = (channels, 1 + (family.frames - 1) // temporal, *(2 * (family.size // spatial,)))
    assert latents.shape == (2, *ae.latent_shape(tuple(x.shape[1:]))) == own == (2, *implied)
    assert ae.decode(latents).shape == x.shape


def test_latents_are_the_posterior_mean_normalised_as_the_pipelines_do(saved):
    """A diffusion model trained on vdm's latents is only usable with the family's pipelines (and
    vice versa) when vdm normalises as they do; decoding must undo exactly that."""
    family, root, config, model = saved
    ae = load_diffusers_autoencoder(str(root))
    x = clip(1, family.frames, family.size, seed=1)
    shift, scale = (v.view(1, -1, 1, 1, 1) for v in expected_normalisation(config))
    with torch.no_grad():
        dist = model.encode(x).latent_dist
        latents = ae.encode(x)  # no generator: the posterior mean
        torch.testing.assert_close(latents, (dist.mean - shift) * scale, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ae.posterior(x)[1], dist.std * scale, rtol=1e-5, atol=1e-5)
        decoded = raw_decode(model, latents / scale + shift).clamp(-1, 1)
    torch.testing.assert_close(ae.decode(latents), decoded, rtol=1e-5, atol=1e-5)


def test_a_clip_length_off_the_frame_rule_is_refused_in_one_line(saved):
    """An off-rule clip would encode to latents whose decode has another length: refused before
    any work, naming the setting to change."""
    family, root, _, _ = saved
    ae = load_diffusers_autoencoder(str(root))
    for frames in family.off_rule:
        with pytest.raises(UserError, match=r"frames.*data\.clip_len") as error:
            ae.encode(clip(1, frames, family.size))
        assert "\n" not in str(error.value)


def test_cogvideox_takes_1_plus_8k_frames_because_it_decodes_latent_pairs(tmp_path):
    """Its decoder upsamples an even number of latent frames T' to 4·T' frames (2 → 8, not 5):
    vdm refuses 1 + 4k frames whose latent count is even, suggesting a length it takes."""
    model = tiny_cogvideox().eval()
    with torch.no_grad():
        assert model.decode(torch.zeros(1, 4, 2, 4, 4)).sample.shape[2] == 8
        assert model.decode(torch.zeros(1, 4, 3, 4, 4)).sample.shape[2] == 9
    model.save_pretrained(tmp_path)
    ae = load_diffusers_autoencoder(str(tmp_path))
    assert [ae.latent_frames_for(n) for n in (1, 9, 17, 25)] == [1, 3, 5, 7]
    with pytest.raises(UserError, match=r"1 \+ 8·k frames \(e.g. 9\).*data\.clip_len"):
        ae.latent_frames_for(13)
    with pytest.raises(UserError, match=r"1 \+ 8·k frames \(e.g. 9\).*data\.clip_len"):
        ae.latent_frames_for(5)
