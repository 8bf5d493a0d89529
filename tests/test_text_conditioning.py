"""Text conditioning: the tiny encoder, cross-attention in both denoisers, caption dropout and
guidance on the prompt."""

import functools

import pytest
import torch

from vdm.diffusion import DDIMSampler, GaussianDiffusion, NoiseSchedule
from vdm.errors import UserError
from vdm.inference.generation import sample_videos
from vdm.inference.model import DiffusionModel, guided_by
from vdm.models import SpaceTimeTransformer, UNet3D
from vdm.text import TextEmbedding, TinyTextEncoder, check_same_text_encoder
from vdm.text.tiny import BOS, tokenize
from vdm.training.module import VideoDiffusionModule

DENOISERS = {
    "unet": lambda **kw: UNet3D(base_channels=16, channel_mult=(1, 2), attention_resolutions=(1, 2), heads=2, **kw),  # noqa: E501
    "transformer": lambda **kw: SpaceTimeTransformer(patch_size=4, hidden_size=32, depth=2, heads=2, **kw),  # noqa: E501
}  # fmt: skip


def wake(model: torch.nn.Module) -> torch.nn.Module:
    """Give every zero-initialised parameter (the text branches among them) random values, so
    the text changes the output as in a trained model."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    return model.eval()


def random_text(batch: int, length: int, dim: int, real: list[int]) -> TextEmbedding:
    tokens = torch.randn(batch, length, dim)
    mask = torch.arange(length)[None] < torch.tensor(real)[:, None]
    return TextEmbedding(tokens, mask, torch.randn(batch, dim))


# -- the tiny encoder ----------------------------------------------------------------------


def test_word_tokens_start_with_bos_and_hash_words_case_blind():
    ids = tokenize("A red, red circle", "words", 4096, 32)
    assert ids[0] == BOS and len(ids) == 1 + 5  # a, red, ",", red, circle
    assert ids[2] == ids[4] and ids == tokenize("a RED, red Circle", "words", 4096, 32)
    assert tokenize("", "words", 4096, 32) == [BOS]  # the null prompt keeps one real token
    assert tokenize("ab", "bytes", 300, 32) == [BOS, 2 + ord("a"), 2 + ord("b")]
    assert len(tokenize("word " * 50, "words", 4096, 8)) == 8  # cut at max_length


def test_tiny_encoder_pads_to_max_length_and_padding_changes_nothing():
    encoder = TinyTextEncoder(dim=32, max_length=16).eval()
    both = encoder.encode(["a small blue square moves up and a large red one moves left", "red"])
    alone = encoder.encode(["red"])
    assert both.tokens.shape == (2, 16, 32) and both.pooled.shape == (2, 32)
    assert both.mask.sum(1).tolist() == [14, 2]
    torch.testing.assert_close(both.tokens[1], alone.tokens[0], rtol=0, atol=1e-6)
    assert not both.tokens[1, 2:].any()  # padded positions carry nothing
    real = both.tokens[1, :2]
    torch.testing.assert_close(both.pooled[1], real.mean(0), rtol=0, atol=1e-6)


def test_tiny_encoder_refuses_unknown_tokenizer_in_one_line():
    with pytest.raises(UserError, match="text_encoder.tokenizer='chars'"):
        TinyTextEncoder(tokenizer="chars")


# -- the denoisers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", DENOISERS)
@pytest.mark.parametrize("frame_conditioning", [False, True])
def test_padded_caption_tokens_do_not_change_the_output(name, frame_conditioning):
    model = wake(DENOISERS[name](text_dim=8, frame_conditioning=frame_conditioning))
    x, t = torch.randn(2, 3, 4, 16, 16), torch.tensor([3, 700])
    short = random_text(2, 5, 8, real=[3, 5])
    # The same real tokens, then 7 more positions of garbage that the mask calls padding.
    long_tokens = torch.cat([short.tokens, 1e3 * torch.randn(2, 7, 8)], dim=1)
    long_mask = torch.cat([short.mask, torch.zeros(2, 7, dtype=torch.bool)], dim=1)
    long_tokens[0, 3:5] = 1e3  # positions 3, 4 of the first caption are padding too
    long = TextEmbedding(long_tokens, long_mask, short.pooled)
    context = torch.tensor([[True, False, False, False]] * 2) if frame_conditioning else None
    with torch.no_grad():
        a = model(x, t, context=context, text=short)
        b = model(x, t, context=context, text=long)
        other = model(x, t, context=context, text=random_text(2, 5, 8, real=[3, 5]))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - other).abs().max() > 1e-3  # while the caption itself does matter


@pytest.mark.parametrize("name", DENOISERS)
def test_a_fresh_text_model_is_the_model_without_text(name):
    """Zero-initialised text branches: a model with text computes what the same weights
    without text compute, whatever the caption."""
    torch.manual_seed(0)
    plain = wake(DENOISERS[name]())
    texted = DENOISERS[name](text_dim=8).eval()
    missing, unexpected = texted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing
    assert all(".cross_attn." in k or k.startswith("cond.text.") for k in missing)
    x, t = torch.randn(2, 3, 4, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        expected = plain(x, t)
        got = texted(x, t, text=random_text(2, 6, 8, real=[2, 6]))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", DENOISERS)
def test_models_without_text_have_no_text_parameters(name):
    keys = DENOISERS[name]().state_dict().keys()
    assert not [k for k in keys if "cross_attn" in k or k.startswith("cond.text")]
    assert [k for k in DENOISERS[name](text_dim=8).state_dict() if "cross_attn" in k]


def test_text_and_model_must_match_in_one_line():
    x, t = torch.randn(1, 3, 4, 16, 16), torch.tensor([3])
    with pytest.raises(UserError, match="built with text \\(text_dim=8\\)"):
        DENOISERS["unet"](text_dim=8)(x, t)
    with pytest.raises(UserError, match="built without it"):
        DENOISERS["unet"]()(x, t, text=random_text(1, 4, 8, [2]))
    with pytest.raises(UserError, match="16 wide.*text_dim=8"):
        DENOISERS["transformer"](text_dim=8)(x, t, text=random_text(1, 4, 16, [2]))


# -- guidance --------------------------------------------------------------------------------


class TextEcho(torch.nn.Module):
    """A denoiser whose output is the pooled text's first value, per sample."""

    text_dim = 4
    num_classes = 0

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, labels=None, context=None, text=None):
        return x * 0 + self.weight * text.pooled[:, :1, None, None, None]


def test_guidance_is_u_plus_scale_times_c_minus_u_on_the_text():
    cond = TextEmbedding(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool),
                         torch.tensor([[2.0] * 4, [5.0] * 4]))  # fmt: skip
    null = TextEmbedding(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool),
                         torch.full((2, 4), 1.0))  # fmt: skip
    fn = guided_by(TextEcho(), {"text": cond}, {"text": null}, scale=3.0)
    out = fn(torch.zeros(2, 1, 1, 1, 1), torch.zeros(2))
    assert out.flatten().tolist() == [1 + 3 * (2 - 1), 1 + 3 * (5 - 1)]


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_the_null_prompt_through_guidance_is_the_unconditional_model(scale):
    encoder = TinyTextEncoder(dim=8, max_length=8).eval()
    model = DiffusionModel(
        wake(DENOISERS["unet"](text_dim=8)), GaussianDiffusion(NoiseSchedule(num_steps=50)),
        text_encoder=encoder,
    )  # fmt: skip
    null = model.encode_text([""])
    x, t = torch.randn(2, 3, 4, 16, 16), torch.tensor([10, 40])
    with torch.no_grad():
        both = {"text": null[[0, 0]]}
        guided = guided_by(model.denoiser, both, both, scale)(x, t)
        unconditional = model.denoiser(x, t, text=null[[0, 0]])
    torch.testing.assert_close(guided, unconditional, rtol=0, atol=1e-5)


def test_sampling_a_text_model_follows_the_prompt_and_refuses_prompts_without_text():
    encoder = TinyTextEncoder(dim=8, max_length=8).eval()
    model = DiffusionModel(
        wake(DENOISERS["unet"](text_dim=8)), GaussianDiffusion(NoiseSchedule(num_steps=50)),
        text_encoder=encoder,
    )  # fmt: skip
    sampler, shape = DDIMSampler(steps=3), (3, 4, 16, 16)
    red = sample_videos(model, sampler, shape, None, 2, 2, 2.0, prompts=["a red circle"])
    again = sample_videos(model, sampler, shape, None, 2, 1, 2.0, prompts=["a red circle"])
    blue = sample_videos(model, sampler, shape, None, 2, 2, 2.0, prompts=["a blue square"])
    torch.testing.assert_close(red, again, rtol=0, atol=1e-5)  # per-clip seeds, any batch size
    assert (red - blue).abs().max() > 1e-3
    plain = DiffusionModel(DENOISERS["unet"](), GaussianDiffusion(NoiseSchedule(num_steps=50)))
    with pytest.raises(UserError, match="trained without a text encoder"):
        sample_videos(plain, sampler, shape, None, 1, 1, prompts=["a red circle"])


# -- training --------------------------------------------------------------------------------


class Zero(torch.nn.Module):
    text_dim = 8

    def forward(self, x, t, labels=None, text=None):
        return x * 0


def test_caption_dropout_gives_the_null_prompt_at_its_rate_and_not_in_validation():
    encoder = TinyTextEncoder(dim=8, max_length=8)
    module = VideoDiffusionModule(
        DENOISERS["unet"](text_dim=8), GaussianDiffusion(NoiseSchedule(num_steps=100)),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), text_encoder=encoder,
        caption_dropout=0.3,
    )  # fmt: skip
    seen = []
    module.encode_text = lambda captions: seen.append(captions) or encoder.encode(captions)
    module.denoiser = Zero()  # no compute: count only
    b = {"video": torch.zeros(3000, 1, 1, 1, 1), "caption": ["a red circle"] * 3000}
    module._loss(b, module._generator(0, 0, 0), train=True)
    assert set(seen[-1]) == {"", "a red circle"}
    assert seen[-1].count("") / 3000 == pytest.approx(0.3, abs=0.03)
    module._loss(b, module._generator(1, 0, 0), train=False)
    assert "" not in seen[-1]


def test_a_text_model_needs_captions_and_an_encoder_in_one_line():
    make = functools.partial(
        VideoDiffusionModule, diffusion=GaussianDiffusion(NoiseSchedule(num_steps=100)),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )  # fmt: skip
    with pytest.raises(UserError, match="model.text_dim"):
        make(DENOISERS["unet"](text_dim=8))
    module = make(DENOISERS["unet"](text_dim=8), text_encoder=TinyTextEncoder(dim=8))
    with pytest.raises(UserError, match="carry no captions"):
        module._loss({"video": torch.zeros(1, 3, 4, 16, 16)}, module._generator(0), train=True)


def test_the_tiny_encoder_trains_with_the_denoiser_and_is_in_the_state_dict():
    encoder = TinyTextEncoder(dim=8, max_length=8)
    module = VideoDiffusionModule(
        DENOISERS["transformer"](text_dim=8), GaussianDiffusion(NoiseSchedule(num_steps=100)),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), text_encoder=encoder,
    )  # fmt: skip
    assert any(k.startswith("text_encoder.") for k in module.state_dict())
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    before = encoder.embed.weight.detach().clone()
    b = {"video": torch.rand(2, 3, 4, 16, 16) * 2 - 1, "caption": ["a red circle", "blue"]}
    for step in range(3):
        loss, _, _ = module._loss(b, module._generator(0, step), train=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(before, encoder.embed.weight)


def test_a_checkpoint_of_another_frozen_text_encoder_is_refused_in_one_line():
    class Frozen:
        trainable = False

        def __init__(self, sha):
            self.fingerprint = {"kind": "t5", "sha256": sha, "path": "/a"}

    check_same_text_encoder({"kind": "t5", "sha256": "ab", "path": "/moved"}, Frozen("ab"), "k")
    check_same_text_encoder(None, TinyTextEncoder(dim=8), "k")  # trained with the run
    with pytest.raises(UserError, match="k: trained with the t5 text encoder with weights ab"):
        check_same_text_encoder({"kind": "t5", "sha256": "ab"}, Frozen("cd"), "k")
    with pytest.raises(UserError, match="not with no frozen text encoder"):
        check_same_text_encoder({"kind": "t5", "sha256": "ab"}, None, "k")
