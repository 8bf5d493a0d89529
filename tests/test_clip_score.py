"""CLIP-score (vdm/evaluation/clip_score.py) on a tiny CLIP saved in the test (nothing is
downloaded): against the cosine of the transformers model's own image and text features, computed
by hand; and through python -m vdm.evaluate on a tiny text-conditional checkpoint."""

import hashlib
import json
import sys

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import compose_config  # noqa: E402
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

from vdm.cli.evaluate import check_config, run  # noqa: E402
from vdm.errors import MissingFileError, UserError  # noqa: E402
from vdm.evaluation.clip_score import ClipScore  # noqa: E402

PROMPTS = ["a large red circle moves left", "two small blue squares drift up", "a red circle"]


def byte_characters() -> list[str]:
    """The 256 characters GPT-2's byte-level BPE (and CLIP's) stands for the bytes with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    others = [b for b in range(256) if b not in printable]
    codes = {b: b for b in printable} | {b: 256 + i for i, b in enumerate(others)}
    return [chr(codes[b]) for b in range(256)]


def tiny_tokenizer(folder) -> CLIPTokenizer:
    """A CLIP tokenizer without merges: every byte is a token (with and without ``</w>``)."""
    characters = byte_characters()
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(folder, model, tokenizer, processor) of a tiny CLIP saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    tokenizer = tiny_tokenizer(folder)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                eos_token_id=eos, pad_token_id=eos,
                bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"))  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    crop = {"height": 32, "width": 32}
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop)
    for part in (model.eval(), tokenizer, processor):
        part.save_pretrained(folder)
    return folder, model, tokenizer, processor


def features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def cosines_by_hand(tiny_clip, videos: np.ndarray, prompts: list[str]) -> torch.Tensor:
    """``(N, T)`` cosine of every frame with its clip's prompt, one frame and prompt at a time."""
    folder, model, tokenizer, _ = tiny_clip
    processor = CLIPImageProcessor.from_pretrained(folder)  # as saved: resize, crop, normalise
    out = torch.empty(videos.shape[:2])
    for n, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
        ids = tokenizer(prompt, return_tensors="pt")
        text = features(model.get_text_features(**ids))[0]
        for t, frame in enumerate(video):
            pixels = processor(images=frame, return_tensors="pt")["pixel_values"]
            image = features(model.get_image_features(pixel_values=pixels))[0]
            out[n, t] = torch.nn.functional.cosine_similarity(image, text, dim=0)
    return out


def videos_of(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_score_is_100_times_the_clamped_cosine_averaged_over_frames(tiny_clip):
    videos = videos_of((4, 3, 40, 56, 3))  # resized and cropped to CLIP's 32² by the processor
    prompts = PROMPTS + PROMPTS[:1]  # a repeated prompt is encoded once, scored twice
    cosine = cosines_by_hand(tiny_clip, videos, prompts)
    assert (cosine > 0).any() and (cosine < 0).any()  # both sides of the clamp are exercised
    expected = (100 * cosine.clamp(min=0)).mean(dim=1)
    scores = ClipScore(tiny_clip[0], batch_size=3).score(videos, prompts)  # batches split clips
    torch.testing.assert_close(scores.per_clip, expected, atol=1e-4, rtol=0)
    assert scores.mean == pytest.approx(float(expected.mean()), abs=1e-4)


def test_frame_stride_scores_every_kth_frame(tiny_clip):
    videos = videos_of((2, 5, 32, 32, 3), seed=1)  # as CLIP takes it
    expected = (100 * cosines_by_hand(tiny_clip, videos, PROMPTS[:2]).clamp(min=0))[:, ::2]
    scores = ClipScore(tiny_clip[0], frame_stride=2).score(videos, PROMPTS[:2])
    torch.testing.assert_close(scores.per_clip, expected.mean(dim=1), atol=1e-4, rtol=0)


def test_own_prompt_and_another_prompt_score_differently(tiny_clip):
    clip = ClipScore(tiny_clip[0])
    videos = videos_of((2, 3, 32, 32, 3), seed=2)
    own = clip.score(videos, PROMPTS[:2]).per_clip
    swapped = clip.score(videos, PROMPTS[1::-1]).per_clip
    assert not torch.allclose(own, swapped)


def test_protocol_names_the_folder_and_the_weights(tiny_clip):
    protocol = ClipScore(tiny_clip[0], frame_stride=2).protocol()
    weights = tiny_clip[0] / "model.safetensors"
    assert protocol["path"] == str(tiny_clip[0].resolve()) and protocol["frame_stride"] == 2
    assert protocol["sha256"] == {weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()}


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and "clip" in message
    return message


def test_bad_folders_are_one_line_naming_clip_path(tiny_clip, tmp_path, monkeypatch):
    with pytest.raises(MissingFileError) as error:
        ClipScore(tmp_path / "nowhere")
    assert "clip.path=" in one_line(error) and "nowhere" in one_line(error)
    with pytest.raises(UserError) as error:
        ClipScore(tmp_path)  # a folder without config.json
    assert "config.json" in one_line(error) and "save_pretrained" in one_line(error)
    text_only = tmp_path / "text-only"
    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4)).save_pretrained(text_only)  # fmt: skip
    with pytest.raises(UserError) as error:
        ClipScore(text_only)
    assert "not a CLIPModel" in one_line(error) and "CLIPTextModel" in one_line(error)
    without_processor = tmp_path / "no-processor"
    tiny_clip[1].save_pretrained(without_processor)
    with pytest.raises(UserError) as error:
        ClipScore(without_processor)
    assert "preprocessor_config.json" in one_line(error)
    with pytest.raises(UserError, match="clip.frame_stride=0"):
        ClipScore(tiny_clip[0], frame_stride=0)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(UserError) as error:
        ClipScore(tiny_clip[0])
    assert "clip.path" in one_line(error) and "pip install 'vdm[text]'" in one_line(error)


def evaluate(ckpt, tmp_path, *overrides):
    out = tmp_path / "metrics.json"
    cfg = compose_config("evaluate", f"ckpt_path={ckpt}", "sampler.steps=2", "batch_size=4",
                         "num_samples=4", f"out={out}", *overrides)  # fmt: skip
    report = run(cfg)
    assert json.loads(out.read_text()) == report
    return report


def test_adherence_reports_clip_score_of_samples_and_real_clips(text_ckpt, tiny_clip, tmp_path):
    report = evaluate(text_ckpt, tmp_path, "task=adherence", f"clip.path={tiny_clip[0]}")
    metrics, protocol = report["metrics"], report["protocol"]
    for key in ("clip_score", "clip_score_real"):
        assert isinstance(metrics[key], float) and 0 <= metrics[key] <= 100
    assert metrics["clip_score"] != metrics["clip_score_real"]
    assert protocol["clip_score"]["path"] == str(tiny_clip[0].resolve())
    assert "model" in metrics and protocol["num_clips"] == 4  # adherence itself still there


def test_generate_with_clip_alone_needs_no_extractor(text_ckpt, tiny_clip, tmp_path):
    report = evaluate(text_ckpt, tmp_path, f"clip.path={tiny_clip[0]}", "num_real=3")
    assert set(report["metrics"]) == {"clip_score", "clip_score_real"}
    assert report["protocol"]["extractor"] is None and report["protocol"]["num_real"] == 3
    with pytest.raises(UserError, match="fvd.extractor is missing"):
        check_config(compose_config("evaluate", f"ckpt_path={text_ckpt}"))


def test_clip_path_needs_text_and_a_sampling_task(unconditional_ckpt, tiny_clip, tmp_path):
    with pytest.raises(UserError) as error:
        evaluate(unconditional_ckpt, tmp_path, f"clip.path={tiny_clip[0]}")
    assert "text-conditional checkpoint" in one_line(error)
    cfg = compose_config("evaluate", "ckpt_path=x.ckpt", "task=predict", "clip.path=/models/clip")
    with pytest.raises(UserError) as error:
        check_config(cfg)
    assert "task=predict" in one_line(error)
