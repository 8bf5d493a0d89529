"""Shared fixtures: test videos from ../shared/data/videos and a frame-index video."""

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own index cache, so no test sees another's (or the user's)."""
    monkeypatch.setenv("VDM_CACHE_DIR", str(tmp_path_factory.mktemp("vdm_cache")))


def videos_required(environ: dict[str, str]) -> bool:
    """In CI (``.ci/run`` sets ``VDM_REQUIRE_TEST_VIDEOS=1``; most CI services set ``CI``) a
    missing test-video folder fails the tests that need it instead of skipping them."""
    ci = environ.get("CI", "").lower() in ("1", "true", "yes")
    return environ.get("VDM_REQUIRE_TEST_VIDEOS") == "1" or ci


def find_shared_videos(folder: Path, environ: dict[str, str]) -> Path:
    """``folder`` if it holds the test videos; otherwise skip, or fail where they are required."""
    if not (folder / "real").is_dir():
        message = f"test videos not found at {folder} (../shared/data/videos beside the repo)"
        if videos_required(environ):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    return find_shared_videos(SHARED_VIDEOS, dict(os.environ))


def frame_index_video(num_frames: int, height: int = 24, width: int = 32) -> np.ndarray:
    """uint8 (T, H, W, 3) whose frame i is the constant colour (i, 255 - i, 3i mod 256)."""
    i = np.arange(num_frames, dtype=np.int64)
    colours = np.stack([i, 255 - i, (3 * i) % 256], axis=1).astype(np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (num_frames, height, width, 3)).copy()


@pytest.fixture
def indexed_video(tmp_path) -> Path:
    """A lossless 40-frame mp4 whose pixel values encode the frame index."""
    from vdm.files.video import write_mp4

    return write_mp4(tmp_path / "indexed.mp4", frame_index_video(40), fps=10, lossless=True)


def link_or_copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())
    return dst


CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_run(tmp_path: Path, *overrides: str, fast: bool = True):
    """The training config as train.py composes it, with the run directory in ``tmp_path``.

    ``fast`` adds ``debug=fast`` (tiny model, a few steps, CSV logs) before ``overrides``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    args = (["debug=fast"] if fast else []) + [
        f"paths.data_dir={tmp_path.parent / 'data'}",
        f"hydra.run.dir={tmp_path}",
        *overrides,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=args, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.output_dir}
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        del cfg["hydra"]
    return cfg


def train_tiny(run_dir: Path, num_classes: int, *overrides: str) -> Path:
    """Train the debug=fast model for 2 steps (EMA from the first step); return its last.ckpt."""
    from vdm.cli.train import run

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VDM_CACHE_DIR", str(run_dir.parent / "cache"))
        run(
            compose_run(
                run_dir,
                f"data.num_classes={num_classes}",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "callbacks.ema.update_starting_at_step=0",
                "~logger",
                *overrides,
            )
        )
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def conditional_ckpt(tmp_path_factory) -> Path:
    """A 3-class checkpoint of the tiny U-Net (32², 8 frames), trained for 2 steps."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "conditional", num_classes=3)


@pytest.fixture(scope="session")
def unconditional_ckpt(tmp_path_factory) -> Path:
    """An unconditional checkpoint of the tiny U-Net (32², 8 frames), trained for 2 steps."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "unconditional", num_classes=0)


@pytest.fixture(scope="session")
def text_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of the tiny U-Net prompted through the tiny text encoder, 2 steps."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "text", 0, "text_encoder=tiny")


@pytest.fixture(scope="session")
def context_ckpt(tmp_path_factory) -> Path:
    """A 3-class checkpoint of the tiny U-Net trained with frame masks (context=mixed)."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "context", 3, "context=mixed")


def compose_config(name: str, *overrides: str):
    """``conf/<name>.yaml`` composed as its command would (``sample`` or ``evaluate``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="session")
def vae_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of vdm's video VAE (python train.py task=autoencoder, debug=fast), 2 steps."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "vae", 3, "task=autoencoder")


@pytest.fixture(scope="session")
def latent_ckpt(tmp_path_factory, vae_ckpt) -> Path:
    """A 3-class context=mixed checkpoint of the tiny U-Net trained on ``vae_ckpt``'s latents."""
    return train_tiny(
        tmp_path_factory.mktemp("trained") / "latent", 3, "autoencoder=vdm",
        f"autoencoder.ckpt_path={vae_ckpt}", "context=mixed",
    )  # fmt: skip


def tiny_kl_vae(folder: Path, levels: int = 2) -> Path:
    """A tiny diffusers ``AutoencoderKL`` (spatial factor ``2 ** (levels - 1)``: 8 as the SD VAE
    with 4; 4 channels, the SD scaling 0.18215) saved into ``folder``, built from constructor
    arguments (nothing downloaded)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * levels,
                  up_block_types=("UpDecoderBlock2D",) * levels)  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16)[:levels], latent_channels=4,
                        norm_num_groups=4, layers_per_block=1, **blocks)  # fmt: skip
    vae.save_pretrained(folder)
    return folder


def tiny_wan_vae(folder: Path) -> Path:
    """A tiny diffusers ``AutoencoderKLWan`` (causal, 4×8×8, 4 channels, per-channel
    ``latents_mean`` / ``latents_std``) saved into ``folder / "vae"`` as in a pipeline folder."""
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.0, 4.0],
    )  # fmt: skip
    vae.save_pretrained(folder / "vae")
    return folder


def tiny_text_encoder(folder: Path, kind: str = "t5") -> Path:
    """A tiny transformers T5 encoder or CLIP text model (width 32, 2 layers) with a byte-level
    tokenizer that needs no vocabulary file, saved into ``folder`` (nothing downloaded)."""
    import torch
    from transformers import (
        ByT5Tokenizer,
        CLIPTextConfig,
        CLIPTextModel,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(0)
    if kind == "t5":
        model = T5EncoderModel(
            T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        )
    else:
        model = CLIPTextModel(
            CLIPTextConfig(vocab_size=384, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=64, eos_token_id=1, pad_token_id=0)
        )  # fmt: skip
    model.save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder
