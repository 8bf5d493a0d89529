"""Fine-tuning CogVideoX (``experiment=finetune_cogvideox``) on a tiny CogVideoX pipeline saved
into a temporary folder (nothing downloaded): v-prediction DDPM on the folder's own schedule,
prompts encoded as the pipeline encodes them. References are diffusers' CogVideoXPipeline, its
scheduler and its own prompt encoding."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from conftest import compose_run
from diffusers import CogVideoXPipeline
from test_finetune import as_pipeline_frames, captioned_clips, model_of, one_line
from test_finetune import initial_noise as vdm_noise
from tiny_pipelines import COGVIDEOX_SCHEDULER, TEXT_LENGTH, tiny_cogvideox_pipeline

from vdm.cli.train import run
from vdm.errors import UserError
from vdm.inference import load_run, sample_videos
from vdm.inference.build import (
    build_diffusion,
    build_sampler,
    build_text_encoder,
)
from vdm.inference.lora_export import export_lora

PROMPTS = ["a red ball rolls left", "two blue squares"]
# 1 + 8 frames: CogVideoX's VAE decodes an odd number of latent frames (here 3). 4 DDIM steps:
# the pipeline's scheduler steps from t to t - 1000 // steps, the step vdm takes where the count
# divides 1000 (tests/test_against_diffusers.py shows where other counts differ).
FRAMES, SIZE, STEPS, GUIDANCE = 9, 32, 4, 6.0


@pytest.fixture(scope="module")
def cogvideox(tmp_path_factory) -> Path:
    return tiny_cogvideox_pipeline(tmp_path_factory.mktemp("models") / "cogvideox")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return captioned_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def pipe(cogvideox):
    pipe = CogVideoXPipeline.from_pretrained(cogvideox)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def overrides(folder: Path, clips: Path, *extra: str) -> list[str]:
    """``experiment=finetune_cogvideox`` sized for the tiny pipeline on a CPU."""
    return [
        "experiment=finetune_cogvideox", f"model.path={folder}", f"data.root={clips}",
        "data.captions=null", "trainer=cpu", "model.dtype=float32",
        "model.gradient_checkpointing=false", "text_encoder.dtype=float32",
        f"text_encoder.max_length={TEXT_LENGTH}", f"data.size={SIZE}", f"data.clip_len={FRAMES}",
        "data.frame_stride=1", "data.batch_size=2", "data.num_workers=0",
        "data.persistent_workers=false", "data.pin_memory=false", "lora.rank=4", "lora.alpha=8",
        "optimizer.lr=1e-2", "callbacks.sample_videos.num_samples=1",
        "callbacks.sample_videos.upscale=1", f"sampler.steps={STEPS}",
        "callbacks.ema.update_starting_at_step=1", "trainer.limit_val_batches=1", "~logger", *extra,
    ]  # fmt: skip


def initial_noise(autoencoder, index: int) -> torch.Tensor:
    """The noise vdm starts clip ``index`` from, frames first as the pipeline's latents."""
    return vdm_noise(autoencoder, index, FRAMES, SIZE).transpose(1, 2)  # (B, T, C, H, W)


def pipeline_video(pipe, prompt: str, latents: torch.Tensor) -> np.ndarray:
    """The pipeline's clip ``(T, H, W, 3)`` in [0, 1] from the initial noise ``latents``."""
    out = pipe(
        prompt, negative_prompt="", num_frames=FRAMES, height=SIZE, width=SIZE,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(),
        output_type="np", max_sequence_length=TEXT_LENGTH, use_dynamic_cfg=False,
    )  # fmt: skip
    return out.frames[0]


def test_prompts_are_encoded_as_the_pipeline_encodes_them(cogvideox, clips, pipe, tmp_path):
    cfg = compose_run(tmp_path, *overrides(cogvideox, clips))
    encoder = build_text_encoder(cfg)
    prompts = [*PROMPTS, "", "x" * 40]  # the null prompt; one cut to max_length
    text = encoder.encode(prompts)
    expected = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=TEXT_LENGTH)
    assert text.mask.all()
    torch.testing.assert_close(text.tokens, expected, rtol=0, atol=1e-6)
    # read back from the text cache: every row, pad rows included
    again = build_text_encoder(compose_run(tmp_path / "again", *overrides(cogvideox, clips)))
    assert torch.equal(again.encode(prompts).tokens, text.tokens)


def test_the_schedule_and_prediction_are_the_scheduler_s(cogvideox, clips, tmp_path):
    cfg = compose_run(tmp_path, *overrides(cogvideox, clips))
    diffusion = build_diffusion(cfg)
    assert diffusion.prediction == "v" and cfg.diffusion.prediction == "v"
    assert cfg.schedule.kind == "scaled_linear" and cfg.schedule.zero_terminal_snr
    assert cfg.schedule.snr_shift == pytest.approx(COGVIDEOX_SCHEDULER["snr_shift_scale"] ** 0.5)
    assert diffusion.schedule.alphas_cumprod[-1] == 0
    # A value set to the scheduler's passes; another is refused in one line naming the key.
    cfg = compose_run(tmp_path, *overrides(cogvideox, clips, "schedule.snr_shift=1.732051"))
    build_diffusion(cfg)
    for override, key in [("schedule=scaled_linear", "schedule.zero_terminal_snr=True"),
                          ("schedule.num_steps=500", "schedule.num_steps=1000"),
                          ("diffusion.prediction=eps", "diffusion.prediction=v")]:  # fmt: skip
        with pytest.raises(UserError) as error:
            build_diffusion(compose_run(tmp_path, *overrides(cogvideox, clips, override)))
        assert f"its scheduler trains with {key}" in one_line(error)


def test_zero_adapters_sample_what_cogvideox_pipeline_draws(cogvideox, clips, pipe, tmp_path):
    """Fresh LoRA adapters are zero: vdm's samples are CogVideoXPipeline's for the same prompt,
    noise, DDIM steps and guidance (both guided against the null prompt "")."""
    cfg = compose_run(tmp_path, *overrides(cogvideox, clips))
    model = model_of(cfg)
    sampler = build_sampler(cfg.sampler)
    videos = sample_videos(model, sampler, (3, FRAMES, SIZE, SIZE), None, 2, 2,
                           guidance_scale=GUIDANCE, prompts=PROMPTS)  # fmt: skip
    for i, prompt in enumerate(PROMPTS):
        expected = pipeline_video(pipe, prompt, initial_noise(model.autoencoder, i))
        np.testing.assert_allclose(as_pipeline_frames(videos[i]), expected, atol=1e-4)
    # The prompt and the guidance matter: the comparison above could not pass by accident.
    unguided = sample_videos(model, sampler, (3, FRAMES, SIZE, SIZE), None, 1, 1,
                             guidance_scale=1.0, prompts=PROMPTS[:1])  # fmt: skip
    assert (unguided[0] - videos[0]).abs().max() > 1e-2
    assert (videos[0] - videos[1]).abs().max() > 1e-2


def test_a_lora_run_exports_adapters_that_cogvideox_pipeline_samples_alike(
    cogvideox, clips, pipe, tmp_path
):
    cfg = compose_run(tmp_path / "run", *overrides(
        cogvideox, clips, "trainer.max_steps=2", "trainer.val_check_interval=2",
        "lr_scheduler.total_steps=2", "lr_scheduler.warmup_steps=1",
    ))  # fmt: skip
    run(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    file = export_lora(ckpt, tmp_path / "lora")
    loaded = load_run(ckpt)
    assert loaded.weights == "EMA"  # the averaged adapters, which export_lora writes by default
    videos = loaded.sample(num_samples=2, batch_size=2, guidance_scale=GUIDANCE, prompts=PROMPTS,
                           progress=False)  # fmt: skip
    plain = pipeline_video(pipe, PROMPTS[0], initial_noise(loaded.model.autoencoder, 0))
    adapted = CogVideoXPipeline.from_pretrained(cogvideox)
    adapted.set_progress_bar_config(disable=True)
    adapted.load_lora_weights(file.parent)
    for i, prompt in enumerate(PROMPTS):
        expected = pipeline_video(adapted, prompt, initial_noise(loaded.model.autoencoder, i))
        np.testing.assert_allclose(as_pipeline_frames(videos[i]), expected, atol=1e-4)
    assert np.abs(plain - as_pipeline_frames(videos[0])).max() > 1e-3  # the adapters matter
