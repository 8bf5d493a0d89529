"""Frozen pretrained text encoders (vdm/text/pretrained.py) and their embedding cache
(vdm/text/cache.py), on tiny T5 / UMT5 / CLIP models saved in the test: nothing is downloaded.
References are the transformers models called directly on the same token ids."""

import hashlib
import logging
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    ByT5Tokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from vdm.errors import MissingFileError, UserError  # noqa: E402
from vdm.text.cache import CachedTextEncoder  # noqa: E402
from vdm.text.pretrained import PretrainedTextEncoder  # noqa: E402

CAPTIONS = ["a red ball", "two squares drift left", "", "a red ball"]
T5_SIZES = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
CLIP_SIZES = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64, eos_token_id=1,
                  pad_token_id=0)  # fmt: skip


def build(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(config).eval()


CLIP_PROJ = CLIPTextModelWithProjection


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (folder, the transformers model saved there with a byte-level tokenizer)."""
    root = tmp_path_factory.mktemp("text_models")
    found = {
        "t5": build(T5EncoderModel, T5Config(**T5_SIZES)),
        "t5_other": build(T5EncoderModel, T5Config(**T5_SIZES), seed=1),
        "clip": build(CLIPTextModel, CLIPTextConfig(**CLIP_SIZES)),
        "clip_proj": build(CLIP_PROJ, CLIPTextConfig(**CLIP_SIZES, projection_dim=32)),
        "clip_proj16": build(CLIP_PROJ, CLIPTextConfig(**CLIP_SIZES, projection_dim=16)),
        "bert": build(BertModel, BertConfig(vocab_size=384, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4, intermediate_size=64)),
    }  # fmt: skip
    for name, model in found.items():
        model.save_pretrained(root / name)
        ByT5Tokenizer().save_pretrained(root / name)
    found = {name: (root / name, model) for name, model in found.items()}
    # diffusers' layout (text_encoder/, tokenizer/): the T5 above, and a UMT5 as Wan's pipelines
    # hold one (transformers 5 overrides a UMT5 folder's tokenizer class, so never beside it)
    umt5 = build(UMT5EncoderModel, UMT5Config(**T5_SIZES))
    for name, model in (("pipeline", found["t5"][1]), ("umt5", umt5)):
        model.save_pretrained(root / name / "text_encoder")
        ByT5Tokenizer().save_pretrained(root / name / "tokenizer")
        found[name] = (root / name, model)
    return found


def reference_ids(captions, length):
    batch = ByT5Tokenizer()(
        captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    )
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("name", ["t5", "umt5", "pipeline"])
def test_t5_matches_the_transformers_model(models, name):
    folder, model = models[name]
    encoder = PretrainedTextEncoder(folder, max_length=24)
    text = encoder.encode(CAPTIONS)
    ids, attention = reference_ids(CAPTIONS, 24)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=attention).last_hidden_state
    mask = attention.bool()
    assert text.tokens.shape == (4, 24, 32) and text.pooled.shape == (4, 32)
    assert encoder.dim == 32 and encoder.max_length == 24 and encoder.trainable is False
    assert torch.equal(text.mask, mask)
    torch.testing.assert_close(text.tokens[mask], hidden[mask], atol=1e-6, rtol=0)
    assert not text.tokens[~mask].any()  # padding rows are zeros
    for row in range(4):  # T5 has no pooled output: the mean of the real tokens
        real = hidden[row, : int(attention[row].sum())]
        torch.testing.assert_close(text.pooled[row], real.mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["t5", "clip"])
def test_encoded_padding_is_the_model_run_without_a_mask_on_every_row(models, name):
    """``padding="encoded"``: what CogVideoX's pipeline gives its transformer, T5 run on the
    padded ids without an attention mask, every row kept."""
    folder, model = models[name]
    encoder = PretrainedTextEncoder(folder, max_length=24, padding="encoded")
    text = encoder.encode(CAPTIONS)
    ids, attention = reference_ids(CAPTIONS, 24)
    with torch.no_grad():
        hidden = getattr(model, "text_model", model)(input_ids=ids).last_hidden_state
    assert text.mask.all()  # every row counts: nothing downstream masks or zeroes them
    torch.testing.assert_close(text.tokens, hidden, atol=1e-6, rtol=0)
    assert text.tokens[~attention.bool()].abs().amax(-1).min() > 0  # pad rows are not zeros
    if name == "t5":  # the pooled mean is still over the real tokens
        real = hidden[0, : int(attention[0].sum())]
        torch.testing.assert_close(text.pooled[0], real.mean(0), atol=1e-6, rtol=0)
    assert encoder.fingerprint["padding"] == "encoded"
    assert "padding" not in PretrainedTextEncoder(folder, max_length=24).fingerprint
    with pytest.raises(UserError, match="text_encoder.padding=masked"):
        PretrainedTextEncoder(folder, padding="masked")


@pytest.mark.parametrize(
    ("name", "pooled_from"),
    [("clip", "pooler"), ("clip_proj", "projection"), ("clip_proj16", "pooler")],
)
def test_clip_matches_the_transformers_model(models, name, pooled_from):
    folder, model = models[name]
    encoder = PretrainedTextEncoder(folder)
    assert encoder.max_length == 64  # 77 by default, but this CLIP has 64 positions
    text = encoder.encode(CAPTIONS)
    ids, attention = reference_ids(CAPTIONS, 64)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attention)
        if "proj" in name:  # the projection variant returns text_embeds, not the pooled output
            projected = out.text_embeds
            out = model.text_model(input_ids=ids, attention_mask=attention)
    mask = attention.bool()
    assert torch.equal(text.mask, mask)
    torch.testing.assert_close(text.tokens[mask], out.last_hidden_state[mask], atol=1e-6, rtol=0)
    expected = projected if pooled_from == "projection" else out.pooler_output
    assert text.pooled.shape == (4, 32)
    torch.testing.assert_close(text.pooled, expected, atol=1e-6, rtol=0)


def test_a_caption_alone_and_beside_a_longer_one(models):
    encoder = PretrainedTextEncoder(models["t5"][0], max_length=32)
    alone = encoder.encode(["a red ball"])
    together = encoder.encode(["a red ball", "a much longer caption about many moving shapes"])
    assert torch.equal(alone.tokens[0], together.tokens[0])
    assert torch.equal(alone.mask[0], together.mask[0])
    assert torch.equal(alone.pooled[0], together.pooled[0])


def test_long_captions_are_truncated_to_max_length(models):
    text = PretrainedTextEncoder(models["t5"][0], max_length=8).encode(["x" * 100])
    assert text.tokens.shape == (1, 8, 32) and bool(text.mask.all())


def test_frozen_and_movable(models):
    encoder = PretrainedTextEncoder(models["t5"][0], max_length=16)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()  # a module above switching to training must not turn dropout on
    assert not encoder.model.training
    assert torch.equal(encoder.encode(["a"]).tokens, encoder.encode(["a"]).tokens)
    assert encoder.to("cpu").device == torch.device("cpu")
    assert not encoder.encode(["a"]).tokens.requires_grad


def test_bfloat16(models):
    encoder = PretrainedTextEncoder(models["t5"][0], max_length=16, dtype="bfloat16")
    text = encoder.encode(["a red ball"])
    assert text.tokens.dtype == torch.bfloat16 and text.pooled.dtype == torch.bfloat16
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    assert encoder.fingerprint["dtype"] == "bfloat16"


def test_fingerprint_names_the_weights(models):
    first = PretrainedTextEncoder(models["t5"][0], max_length=16).fingerprint
    again = PretrainedTextEncoder(models["t5"][0], max_length=16).fingerprint
    other = PretrainedTextEncoder(models["t5_other"][0], max_length=16).fingerprint
    assert first["kind"] == "t5" and first["class"] == "T5EncoderModel"
    assert first["path"] == str(models["t5"][0]) and first["max_length"] == 16
    assert len(first["sha256"]) == 64 and first["sha256"] == again["sha256"]
    assert other["sha256"] != first["sha256"]
    clip = PretrainedTextEncoder(models["clip_proj"][0]).fingerprint
    assert clip["kind"] == "clip" and clip["class"] == "CLIPTextModelWithProjection"


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_errors_name_the_folder(models, tmp_path):
    with pytest.raises(MissingFileError) as error:
        PretrainedTextEncoder(tmp_path / "nowhere")
    assert "nowhere" in one_line(error)
    with pytest.raises(UserError) as error:
        PretrainedTextEncoder(tmp_path)  # a folder without config.json
    assert str(tmp_path) in one_line(error) and "config.json" in one_line(error)
    with pytest.raises(UserError) as error:
        PretrainedTextEncoder(models["bert"][0])
    assert str(models["bert"][0]) in one_line(error) and "BertModel" in one_line(error)
    assert "T5EncoderModel" in one_line(error)
    with pytest.raises(UserError, match="float64"):
        PretrainedTextEncoder(models["t5"][0], dtype="float64")
    with pytest.raises(UserError, match="max_length=0"):
        PretrainedTextEncoder(models["t5"][0], max_length=0)
    with pytest.raises(UserError, match="max_length=100"):
        PretrainedTextEncoder(models["clip"][0], max_length=100)


def test_without_transformers_says_how_to_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(UserError) as error:
        PretrainedTextEncoder(models["t5"][0])
    assert "pip install 'vdm[text]'" in one_line(error)


class Counting:
    """A frozen encoder that counts the captions it is asked to encode."""

    trainable = False

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, []
        self.dim, self.max_length = encoder.dim, encoder.max_length
        self.fingerprint = encoder.fingerprint

    def encode(self, captions):
        self.calls.append(list(captions))
        return self.encoder.encode(captions)


@pytest.fixture(scope="module")
def t5(models):
    return PretrainedTextEncoder(models["t5"][0], max_length=16)


def same(a, b):
    return all(torch.equal(x, y) for x, y in ((a.tokens, b.tokens), (a.mask, b.mask),
                                               (a.pooled, b.pooled)))  # fmt: skip


def test_cache_equals_fresh_and_serves_hits_from_disk(t5, tmp_path):
    first = Counting(t5)
    cache = CachedTextEncoder(first, root=tmp_path)
    assert first.calls == [[""]]  # the null prompt, at construction
    stored = cache.encode(CAPTIONS)
    assert first.calls[1:] == [["a red ball", "two squares drift left"]]  # misses, in one call
    fresh = t5.encode(CAPTIONS)
    assert same(stored, fresh)
    second = Counting(t5)
    again = CachedTextEncoder(second, root=tmp_path)
    assert same(again.encode(CAPTIONS), fresh) and same(again.null, t5.encode([""]))
    assert second.calls == []  # every caption, "" included, read from disk
    assert again.dim == 32 and again.max_length == 16 and again.trainable is False
    assert again.fingerprint == t5.fingerprint


def test_null_entry_is_on_disk_after_construction(t5, tmp_path):
    cache = CachedTextEncoder(t5, root=tmp_path)
    name = hashlib.sha256(b"").hexdigest() + ".pt"
    entries = list((tmp_path / "text").rglob(name))
    assert entries == [cache.entry_path("")]
    assert len(cache.null) == 1 and same(cache.null, t5.encode([""]))


def test_default_root_is_vdm_cache_dir(t5, tmp_path, monkeypatch):
    monkeypatch.setenv("VDM_CACHE_DIR", str(tmp_path))
    cache = CachedTextEncoder(t5)
    assert cache.folder.parent == tmp_path / "text"


def test_cache_folder_follows_weights_and_length(models, t5, tmp_path):
    def folder(encoder):
        return CachedTextEncoder(encoder, root=tmp_path).folder

    base = folder(t5)
    assert folder(PretrainedTextEncoder(models["t5"][0], max_length=16)) == base
    assert folder(PretrainedTextEncoder(models["t5_other"][0], max_length=16)) != base
    assert folder(PretrainedTextEncoder(models["t5"][0], max_length=24)) != base
    assert folder(PretrainedTextEncoder(models["t5"][0], max_length=16, dtype="bfloat16")) != base


def test_encoded_padding_has_its_own_cache_folder_and_its_entries_hold_every_row(
    models, t5, tmp_path
):
    encoded = PretrainedTextEncoder(models["t5"][0], max_length=16, padding="encoded")
    cache = CachedTextEncoder(encoded, root=tmp_path)
    assert cache.folder != CachedTextEncoder(t5, root=tmp_path).folder
    fresh = encoded.encode(CAPTIONS)
    assert same(cache.encode(CAPTIONS), fresh)
    entry = torch.load(cache.entry_path("a red ball"), weights_only=True)
    assert entry["tokens"].shape == (16, 32) and entry["mask"].all()
    counting = Counting(encoded)
    again = CachedTextEncoder(counting, root=tmp_path)
    assert same(again.encode(CAPTIONS), fresh) and same(again.null, encoded.encode([""]))
    assert counting.calls == []  # read back from disk, pad rows included


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape"])
def test_damaged_entry_is_encoded_again(t5, tmp_path, caplog, damage):
    CachedTextEncoder(t5, root=tmp_path).encode(["a red ball"])
    counting = Counting(t5)
    cache = CachedTextEncoder(counting, root=tmp_path)
    path = cache.entry_path("a red ball")
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        torch.save({"tokens": torch.zeros(3, 5), "mask": torch.ones(16, dtype=torch.bool),
                    "pooled": torch.zeros(32)}, path)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="vdm.text.cache"):
        text = cache.encode(["a red ball"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert counting.calls == [["a red ball"]]
    assert same(text, t5.encode(["a red ball"]))
    assert same(CachedTextEncoder(t5, root=tmp_path).encode(["a red ball"]), text)  # rewritten


def test_precompute_fills_the_cache_once(t5, tmp_path):
    counting = Counting(t5)
    cache = CachedTextEncoder(counting, root=tmp_path)
    captions = [f"caption {i % 5}" for i in range(12)] + [""]
    assert cache.precompute(captions, batch_size=2) == 5  # distinct, "" already cached
    assert [len(c) for c in counting.calls[1:]] == [2, 2, 1]
    assert cache.precompute(captions) == 0
    later = Counting(t5)
    text = CachedTextEncoder(later, root=tmp_path).encode(captions)
    assert later.calls == [] and same(text, t5.encode(captions))


def test_trainable_encoder_is_refused(t5, tmp_path):
    class Trainable(Counting):
        trainable = True

    with pytest.raises(UserError, match="frozen"):
        CachedTextEncoder(Trainable(t5), root=tmp_path)


def test_cache_keeps_bfloat16(models, tmp_path):
    encoder = PretrainedTextEncoder(models["clip"][0], max_length=16, dtype="bfloat16")
    CachedTextEncoder(encoder, root=tmp_path).encode(CAPTIONS)
    read = CachedTextEncoder(encoder, root=tmp_path).encode(CAPTIONS)  # from disk
    assert read.tokens.dtype == torch.bfloat16 and same(read, encoder.encode(CAPTIONS))


def test_a_frozen_encoder_prompts_a_module_without_entering_its_state_or_its_copies(
    models, tmp_path
):
    import copy
    import functools

    from vdm.diffusion import GaussianDiffusion, NoiseSchedule
    from vdm.models import UNet3D
    from vdm.text.load import load_text_encoder, text_width
    from vdm.training.module import VideoDiffusionModule

    folder = models["t5"][0]
    assert text_width(folder) == 32 and text_width(models["clip"][0]) == 32
    encoder = load_text_encoder(folder, max_length=16)
    assert isinstance(encoder, CachedTextEncoder)
    with pytest.raises(UserError, match="text_encoder.dim=64, but the encoder in .* is 32 wide"):
        load_text_encoder(folder, max_length=16, dim=64)
    module = VideoDiffusionModule(
        UNet3D(base_channels=16, channel_mult=(1, 2), attention_resolutions=(2,), text_dim=32),
        GaussianDiffusion(NoiseSchedule(num_steps=100)),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), text_encoder=encoder,
    )  # fmt: skip
    assert not [k for k in module.state_dict() if k.startswith("text_encoder")]
    assert all(p.requires_grad for p in module.parameters())  # the frozen T5 is not among them
    assert copy.deepcopy(module).text_encoder is encoder  # the EMA copy shares the T5
    batch = {"video": torch.zeros(2, 3, 4, 16, 16), "caption": ["a red ball", "two squares"]}
    loss, _, _ = module._loss(batch, module._generator(0), train=True)
    assert torch.isfinite(loss)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["text_encoder"] == encoder.fingerprint
    module.on_load_checkpoint(checkpoint)
    other = load_text_encoder(models["t5_other"][0], max_length=16)
    checkpoint["text_encoder"] = other.fingerprint
    with pytest.raises(UserError, match="ckpt_path: trained with the t5 text encoder"):
        module.on_load_checkpoint(checkpoint)


def test_the_cache_moves_its_encoder_only_when_a_caption_must_be_encoded(t5, tmp_path):
    moves = []

    class Tracking(Counting):
        def to(self, *args, **kwargs):
            moves.append(args)
            return self

    cache = CachedTextEncoder(Tracking(t5), root=tmp_path)
    cache.encode(["a red ball"])
    cache.to("cpu")
    cache.encode(["a red ball", ""])  # hits: nothing moves
    assert moves == []
    cache.encode(["a new caption"])
    assert moves == [("cpu",)]
