"""Fine-tuning a published diffusers video model (vdm/published/): a tiny Wan pipeline saved into
a temporary folder (nothing downloaded) trained with LoRA through ``experiment=finetune_wan``.
References are diffusers' own WanPipeline and the transformer's saved weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from conftest import compose_run
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file
from tiny_pipelines import TEXT_LENGTH, tiny_wan_pipeline

from vdm.cli.export_lora import run as export_run
from vdm.cli.train import run
from vdm.errors import MissingFileError, UserError
from vdm.files.checkpoint import load_checkpoint
from vdm.files.video import write_mp4
from vdm.inference import DiffusionModel, load_run, sample_videos
from vdm.inference.build import (
    build_autoencoder,
    build_diffusion,
    build_model,
    build_sampler,
    build_text_encoder,
)
from vdm.inference.generation import clip_seed
from vdm.published import scheduler_objective

PROMPTS = ["a red ball rolls left", "two blue squares"]
FRAMES, SIZE, STEPS, GUIDANCE = 5, 32, 3, 4.0


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> Path:
    return tiny_wan_pipeline(tmp_path_factory.mktemp("models") / "wan")


@pytest.fixture(scope="module")
def other_wan(tmp_path_factory) -> Path:
    """The same pipeline with another transformer (seed 1): another base model."""
    return tiny_wan_pipeline(tmp_path_factory.mktemp("models") / "wan_other", seed=1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return captioned_clips(tmp_path_factory.mktemp("clips"))


def captioned_clips(root: Path) -> Path:
    """Six captioned 12-frame 40² clips in ``root``, four to train on and two to validate."""
    rng = np.random.default_rng(0)
    for i in range(6):
        split = "train" if i < 4 else "val"
        frames = np.zeros((12, 40, 40, 3), np.uint8)
        for t in range(12):  # a square moving right over a coloured ground
            frames[t] = rng.integers(0, 60, 3)
            frames[t, 10:20, 2 + 2 * t : 12 + 2 * t] = (200, 40 * i, 30)
        write_mp4(root / split / f"clip_{i}.mp4", frames, fps=8, lossless=True)
        (root / split / f"clip_{i}.txt").write_text(f"a square moves right, number {i}")
    return root


def finetune_overrides(wan: Path, clips: Path, *extra: str) -> list[str]:
    """``experiment=finetune_wan`` sized for the tiny pipeline on a CPU."""
    return [
        "experiment=finetune_wan", f"model.path={wan}", f"data.root={clips}", "data.captions=null",
        "trainer=cpu", "model.dtype=float32", "model.gradient_checkpointing=false",
        "text_encoder.dtype=float32", f"text_encoder.max_length={TEXT_LENGTH}",
        "autoencoder.dtype=float32",
        f"data.size={SIZE}", f"data.clip_len={FRAMES}", "data.frame_stride=1",
        "data.batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
        "data.pin_memory=false", "lora.rank=4", "lora.alpha=8", "optimizer.lr=1e-2",
        "callbacks.sample_videos.num_samples=1", "callbacks.sample_videos.upscale=1",
        f"sampler.steps={STEPS}", "callbacks.ema.update_starting_at_step=1",
        "trainer.limit_val_batches=1", "~logger", *extra,
    ]  # fmt: skip


def train(run_dir: Path, wan: Path, clips: Path, *extra: str):
    return run(compose_run(run_dir, *finetune_overrides(wan, clips, *extra)))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VDM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vdm_cache"))


def pipeline_video(pipe, prompt: str, latents: torch.Tensor) -> np.ndarray:
    """The pipeline's clip ``(T, H, W, 3)`` in [0, 1] from the initial noise ``latents``."""
    out = pipe(
        prompt, negative_prompt="", height=SIZE, width=SIZE, num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(),
        output_type="np", max_sequence_length=TEXT_LENGTH,
    )  # fmt: skip
    return out.frames[0]


def as_pipeline_frames(video: torch.Tensor) -> np.ndarray:
    """vdm's clip ``(C, T, H, W)`` in [-1, 1] as the pipeline returns it."""
    return ((video.permute(1, 2, 3, 0).numpy() + 1) / 2).clip(0, 1)


def initial_noise(
    autoencoder, index: int, frames: int = FRAMES, size: int = SIZE, seed: int = 0
) -> torch.Tensor:
    """The noise vdm starts clip ``index`` of ``frames × size²`` from (seeded by
    ``(seed, index)``)."""
    shape = (1, *autoencoder.latent_shape((3, frames, size, size)))
    return torch.randn(shape, generator=torch.Generator().manual_seed(clip_seed(seed, 0, index)))


def model_of(cfg) -> DiffusionModel:
    """The composed run's model as sampling builds it, without training (adapters at zero)."""
    return DiffusionModel(
        build_model(cfg), build_diffusion(cfg), build_autoencoder(cfg), build_text_encoder(cfg)
    ).eval()


def test_zero_adapters_sample_what_wan_pipeline_draws(wan, clips, tmp_path):
    """Fresh LoRA adapters are zero: vdm's samples are WanPipeline's for the same prompt,
    noise, steps and guidance (both guided against the null prompt "")."""
    cfg = compose_run(tmp_path, *finetune_overrides(wan, clips, f"sampler.steps={STEPS}"))
    model = model_of(cfg)
    assert model.diffusion.shift == 3.0  # from the folder's scheduler_config.json
    sampler = build_sampler(cfg.sampler)
    videos = sample_videos(model, sampler, (3, FRAMES, SIZE, SIZE), None, 2, 2,
                           guidance_scale=GUIDANCE, prompts=PROMPTS)  # fmt: skip
    pipe = WanPipeline.from_pretrained(wan)
    for i, prompt in enumerate(PROMPTS):
        expected = pipeline_video(pipe, prompt, initial_noise(model.autoencoder, i))
        np.testing.assert_allclose(as_pipeline_frames(videos[i]), expected, atol=1e-4)
    # The prompt and the guidance matter: the comparison above could not pass by accident.
    unguided = sample_videos(model, sampler, (3, FRAMES, SIZE, SIZE), None, 1, 1,
                             guidance_scale=1.0, prompts=PROMPTS[:1])  # fmt: skip
    assert (unguided[0] - videos[0]).abs().max() > 1e-2
    assert (videos[0] - videos[1]).abs().max() > 1e-2


@pytest.fixture(scope="module")
def finetuned(wan, clips, tmp_path_factory):
    """Two LoRA runs of 4 steps: straight through, and stopped at 2 then resumed."""
    root = tmp_path_factory.mktemp("finetune")
    common = ("trainer.val_check_interval=2", "lr_scheduler.total_steps=4")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VDM_CACHE_DIR", str(root / "cache"))
        full = train(root / "full", wan, clips, *common, "trainer.max_steps=4")
        train(root / "first", wan, clips, *common, "trainer.max_steps=2")
        first = root / "first" / "checkpoints" / "last.ckpt"
        train(root / "resumed", wan, clips, *common, "trainer.max_steps=4", f"ckpt_path={first}")
    return root, full.lightning_module


def test_lora_trains_the_adapters_alone_and_leaves_the_base_bit_identical(wan, finetuned):
    root, module = finetuned
    base = WanTransformer3DModel.from_pretrained(wan / "transformer").state_dict()
    trained = module.denoiser.transformer
    adapters = {n: p for n, p in trained.named_parameters() if "lora_" in n}
    assert adapters and all(p.requires_grad for p in adapters.values())
    assert any(n.endswith("lora_B.default.weight") and p.abs().max() > 0
               for n, p in adapters.items())  # fmt: skip
    frozen = {n.replace("base_layer.", ""): p
              for n, p in trained.named_parameters() if "lora_" not in n}  # fmt: skip
    assert frozen.keys() == base.keys()
    for name, value in frozen.items():
        assert not value.requires_grad and torch.equal(value, base[name]), name
    ckpt = load_checkpoint(root / "full" / "checkpoints" / "last.ckpt")
    for key in ("state_dict", "current_model_state"):  # EMA and training weights: adapters only
        assert ckpt[key] and all(".lora_" in k for k in ckpt[key]), key
    optimized = sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"])
    assert optimized == len(adapters)
    assert ckpt["denoiser"]["class"] == "WanTransformer3DModel"
    assert ckpt["denoiser"]["lora"]["rank"] == 4
    assert len(ckpt["denoiser"]["sha256"]) == 64


def test_a_resumed_lora_run_ends_exactly_where_the_uninterrupted_one_does(finetuned):
    root, _ = finetuned
    full = load_checkpoint(root / "full" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(root / "resumed" / "checkpoints" / "last.ckpt")
    assert full["global_step"] == resumed["global_step"] == 4
    for key in ("state_dict", "current_model_state"):
        assert full[key].keys() == resumed[key].keys()
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    for a, b in zip(full["optimizer_states"][0]["state"].values(),
                    resumed["optimizer_states"][0]["state"].values(), strict=True):  # fmt: skip
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a[moment], b[moment])


def test_the_exported_lora_in_wan_pipeline_reproduces_vdm_samples(wan, finetuned, tmp_path):
    root, _ = finetuned
    ckpt = root / "full" / "checkpoints" / "last.ckpt"
    file = export_run(_cfg(ckpt_path=str(ckpt), out=str(tmp_path / "lora"), weights="ema"))
    assert file == tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    exported = load_file(file)
    assert exported and all(k.startswith("transformer.") and ".default." not in k for k in exported)

    loaded = load_run(ckpt)
    assert loaded.weights == "EMA"
    videos = loaded.sample(num_samples=2, batch_size=2, guidance_scale=GUIDANCE, prompts=PROMPTS,
                           progress=False)  # fmt: skip
    pipe = WanPipeline.from_pretrained(wan)
    plain = pipeline_video(pipe, PROMPTS[0], initial_noise(loaded.model.autoencoder, 0))
    pipe.load_lora_weights(tmp_path / "lora")
    for i, prompt in enumerate(PROMPTS):
        expected = pipeline_video(pipe, prompt, initial_noise(loaded.model.autoencoder, i))
        np.testing.assert_allclose(as_pipeline_frames(videos[i]), expected, atol=1e-4)
    assert np.abs(plain - as_pipeline_frames(videos[0])).max() > 1e-3  # the adapters matter


def _cfg(**values):
    from omegaconf import OmegaConf

    return OmegaConf.create(values)


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_refuses_another_base_model(finetuned, other_wan, wan, clips, tmp_path):
    root, _ = finetuned
    ckpt = root / "full" / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError) as error:
        load_run(ckpt, model_path=str(other_wan))
    assert "another base model" in one_line(error) and str(other_wan) in one_line(error)
    with pytest.raises(UserError) as error:  # resuming on it
        train(tmp_path / "run", other_wan, clips, "trainer.max_steps=6", f"ckpt_path={ckpt}")
    assert "another base model" in one_line(error)
    # The same weights in another folder are the same base model.
    moved = load_run(ckpt, model_path=str(wan))
    assert moved.config.autoencoder.path == str(wan)


def test_folders_without_a_supported_transformer_are_refused_in_one_line(wan, clips, tmp_path):
    with pytest.raises(MissingFileError) as error:
        compose_and_check(tmp_path / "missing", clips)
    assert "is not a folder" in one_line(error)
    (tmp_path / "vae_only" / "vae").mkdir(parents=True)
    vae_config = tmp_path / "vae_only" / "vae" / "config.json"
    vae_config.write_text('{"_class_name": "AutoencoderKLWan"}')
    with pytest.raises(UserError) as error:
        compose_and_check(tmp_path / "vae_only", clips)
    assert "holds no diffusers transformer" in one_line(error)
    (tmp_path / "other" / "transformer").mkdir(parents=True)
    (tmp_path / "other" / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "HunyuanVideoTransformer3DModel"})
    )
    with pytest.raises(UserError) as error:
        compose_and_check(tmp_path / "other", clips)
    assert "HunyuanVideoTransformer3DModel" in one_line(error)
    assert "WanTransformer3DModel" in one_line(error)  # the supported ones are named


def compose_and_check(path: Path, clips: Path, *extra: str):
    from vdm.cli.checks import check_published_config, check_train_config
    from vdm.inference.build import fill_autoencoder_geometry

    cfg = compose_run(path.parent / "run", *finetune_overrides(path, clips, *extra))
    check_published_config(cfg)  # as vdm.cli.train.run does, before the autoencoder's geometry
    fill_autoencoder_geometry(cfg)
    check_train_config(cfg)
    return cfg


def test_the_run_objective_must_be_the_scheduler_s(wan, clips, tmp_path):
    cfg = compose_and_check(wan, clips)
    assert cfg.diffusion.shift == 3.0  # filled from scheduler/scheduler_config.json
    with pytest.raises(UserError) as error:
        compose_and_check(wan, clips, "diffusion=ddpm", "sampler=ddim")
    assert "diffusion=flow" in one_line(error)
    with pytest.raises(UserError) as error:
        run(compose_run(tmp_path / "vdm", "+lora.rank=4"))
    assert "model=diffusers" in one_line(error)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
         {"kind": "flow", "shift": 3.0}),
        # Wan's published folders: UniPC on flow sigmas, shifted by flow_shift
        ({"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
          "use_flow_sigmas": True, "flow_shift": 5.0}, {"kind": "flow", "shift": 5.0}),
        # LTX-Video: the shift depends on the clip's size
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True,
          "base_image_seq_len": 1024, "base_shift": 0.95, "max_shift": 2.05},
         {"kind": "flow", "shift": None,
          "dynamic": {"base_image_seq_len": 1024, "max_image_seq_len": 4096, "base_shift": 0.95,
                      "max_shift": 2.05, "time_shift_type": "exponential"}}),
        # CogVideoX: v-prediction DDPM, zero terminal SNR
        ({"_class_name": "CogVideoXDDIMScheduler", "prediction_type": "v_prediction",
          "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
          "rescale_betas_zero_snr": True, "snr_shift_scale": 3.0},
         {"kind": "ddpm", "prediction": "v",
          "schedule": {"kind": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "num_steps": 1000, "zero_terminal_snr": True, "snr_shift": 3.0**0.5}}),
        # the class's own defaults for keys a config leaves out; diffusers' cosine name
        ({"_class_name": "CogVideoXDDIMScheduler", "prediction_type": "v_prediction"},
         {"kind": "ddpm", "prediction": "v",
          "schedule": {"kind": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "num_steps": 1000, "zero_terminal_snr": False, "snr_shift": 3.0**0.5}}),
        ({"_class_name": "DDIMScheduler", "prediction_type": "epsilon",
          "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500},
         {"kind": "ddpm", "prediction": "eps",
          "schedule": {"kind": "cosine", "beta_start": 1e-4, "beta_end": 0.02,
                       "num_steps": 500, "zero_terminal_snr": False, "snr_shift": 1.0}}),
    ],
)  # fmt: skip
def test_scheduler_objective(tmp_path, config, expected):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert scheduler_objective(tmp_path) == expected


@pytest.mark.parametrize("positions", [256, 1024, 4096, 6144])
def test_a_size_dependent_shift_is_the_ltx_pipeline_s(positions):
    """LTX-Video's pipeline computes μ from the latent sequence length and lets its scheduler
    shift every σ by it: the constant shift vdm trains and samples with moves σ the same way."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    from vdm.diffusion.flow import shift_time
    from vdm.published.folder import DYNAMIC_DEFAULTS, dynamic_shift

    config = {"base_image_seq_len": 1024, "max_image_seq_len": 4096, "base_shift": 0.95,
              "max_shift": 2.05}  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, **config)
    mu = calculate_shift(positions, 1024, 4096, 0.95, 2.05)
    sigmas = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    expected = scheduler.time_shift(mu, 1.0, sigmas)
    shift = dynamic_shift(positions, {**DYNAMIC_DEFAULTS, **config})
    torch.testing.assert_close(shift_time(sigmas, shift), expected, rtol=1e-12, atol=1e-12)


def test_an_unknown_prediction_type_is_refused(tmp_path):
    config = {"_class_name": "DDIMScheduler", "prediction_type": "x"}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="prediction_type"):
        scheduler_objective(tmp_path)
    assert scheduler_objective(tmp_path / "none") is None


@pytest.mark.parametrize(
    ("config", "words"),
    [({"beta_schedule": "exp"}, "(exp) is not one vdm builds"),
     ({"trained_betas": [0.1, 0.2]}, "(trained_betas) is not one vdm builds")],
)  # fmt: skip
def test_a_beta_table_vdm_cannot_build_is_refused(tmp_path, config, words):
    config = {"_class_name": "DDPMScheduler", "prediction_type": "epsilon", **config}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as error:
        scheduler_objective(tmp_path)
    assert words in one_line(error)


def test_lora_without_peft_says_how_to_install(monkeypatch):
    import sys

    from vdm.published.lora import lora_config

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(UserError, match=r"pip install 'vdm\[finetune\]'"):
        lora_config(4, 4, 0.0, ["to_q"])


def test_finetune_ltx_trains_with_the_shift_its_pipeline_computes_and_samples(clips, tmp_path):
    """``experiment=finetune_ltx`` on a tiny LTX pipeline folder: the shift comes from the
    scheduler's size rule (2 latent frames of 2², far below its base length), the run trains
    and its checkpoint samples through vdm.sample's library path."""
    from tiny_pipelines import tiny_ltx_pipeline

    from vdm.published.folder import DYNAMIC_DEFAULTS, dynamic_shift

    folder = tiny_ltx_pipeline(tmp_path / "ltx")
    overrides = finetune_overrides(folder, clips, "data.size=64", "data.clip_len=9")
    overrides[0] = "experiment=finetune_ltx"
    trainer = run(compose_run(tmp_path / "run", *overrides, "trainer.max_steps=2",
                              "trainer.val_check_interval=2"))  # fmt: skip
    dynamic = {**DYNAMIC_DEFAULTS, "base_image_seq_len": 1024, "base_shift": 0.95,
               "max_shift": 2.05}  # fmt: skip
    assert trainer.lightning_module.diffusion.shift == pytest.approx(dynamic_shift(8, dynamic))
    loaded = load_run(tmp_path / "run" / "checkpoints" / "last.ckpt")
    videos = loaded.sample(num_samples=1, prompts=["a red ball"], progress=False)
    assert videos.shape == (1, 3, 9, 64, 64) and torch.isfinite(videos).all()


def wan_step(denoiser, seed: int = 0):
    """A flow-matching loss's gradients on the trainable weights of ``denoiser``."""
    from vdm.models.text_embedding import TextEmbedding

    g = torch.Generator().manual_seed(seed)
    x, tokens = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(2, 6, 32, generator=g)
    text = TextEmbedding(tokens, torch.ones(2, 6, dtype=torch.bool), tokens.mean(1))
    out = denoiser.train()(x, torch.tensor([700.0, 90.0]), text=text)
    out.float().square().mean().backward()
    return {n: p.grad for n, p in denoiser.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_recomputes_the_same_gradients(wan):
    from vdm.published import load_diffusers_denoiser

    lora = {"rank": 4, "alpha": 4, "dropout": 0.0}
    plain = load_diffusers_denoiser(str(wan), lora=lora)
    checkpointed = load_diffusers_denoiser(str(wan), gradient_checkpointing=True, lora=lora)
    assert checkpointed.transformer.gradient_checkpointing
    for name, p in plain.named_parameters():  # non-zero B, so that A gets gradients too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    checkpointed.load_state_dict(plain.state_dict())  # the same (random) adapters
    expected, got = wan_step(plain), wan_step(checkpointed)
    assert expected.keys() == got.keys() and len(expected) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)


def test_a_bfloat16_base_trains_float32_adapters(wan):
    from vdm.published import load_diffusers_denoiser

    model = load_diffusers_denoiser(str(wan), dtype="bfloat16", lora={"rank": 4, "alpha": 4})
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for n, p in params.items() if "lora_" in n)
    # the adapted projections' base weights are bfloat16 (diffusers keeps a few norms and
    # embeddings of Wan in float32, its _keep_in_fp32_modules)
    assert all(p.dtype == torch.bfloat16 for n, p in params.items() if "base_layer" in n)
    grads = wan_step(model)
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())


def test_a_base_model_s_digest_is_remembered_until_its_files_change(tmp_path, monkeypatch):
    import hashlib

    from vdm.files import verify

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(b"model.safetensors" + b"abc" * 1000).hexdigest()
    assert verify.files_sha256_remembered([weights], tmp_path / "memo") == expected

    def no_hashing(files):
        raise AssertionError("hashed again")

    monkeypatch.setattr(verify, "files_sha256", no_hashing)
    assert verify.files_sha256_remembered([weights], tmp_path / "memo") == expected
    monkeypatch.undo()
    weights.write_bytes(b"abcd" * 1000)  # another size: hashed again
    changed = hashlib.sha256(b"model.safetensors" + b"abcd" * 1000).hexdigest()
    assert verify.files_sha256_remembered([weights], tmp_path / "memo") == changed


def test_lora_targets_that_match_nothing_are_one_line(wan):
    from vdm.published import load_diffusers_denoiser

    with pytest.raises(UserError) as error:
        load_diffusers_denoiser(str(wan), lora={"rank": 4, "target_modules": ["no_such_layer"]})
    assert "lora.target_modules=['no_such_layer']" in one_line(error)
