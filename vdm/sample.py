"""`python -m vdm.sample ckpt_path=PATH`: sample clips from a checkpoint to mp4, gif and npz.

The checkpoint stores the resolved training config, so the denoiser, the diffusion process and
the clip size are rebuilt from it: no model flags to repeat. Checkpoints of runs with
``EMAWeightAveraging`` hold the EMA weights in ``state_dict``; those are the ones sampled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vdm.checkpoint import load_checkpoint
from vdm.diffusion.samplers import Sampler
from vdm.module import VideoDiffusionModule
from vdm.train import build_diffusion, build_model, user_errors_in_one_line
from vdm.video_io import to_uint8, write_clips, write_npz

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Written clips are upscaled (nearest neighbour) to at least this many pixels: 32-px clips are
# too small to watch. The npz keeps the model's resolution.
MIN_VIEW_SIZE = 128


@dataclass
class LoadedRun:
    """A trained model rebuilt from its checkpoint."""

    module: VideoDiffusionModule  # denoiser + diffusion, in eval mode
    config: DictConfig  # the training run's resolved config
    weights: str  # "EMA" or "training" (a run without EMAWeightAveraging)
    global_step: int  # optimizer steps the weights were trained for


def load_run(ckpt_path: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild the denoiser and the diffusion of a training run and load its weights."""
    checkpoint = load_checkpoint(ckpt_path)
    config = OmegaConf.create(checkpoint["hyper_parameters"])
    prefix = "denoiser."
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    denoiser = build_model(config)
    try:
        denoiser.load_state_dict(state)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"ckpt_path={ckpt_path}: its weights do not fit its own model config ({reason}); "
            "was it written by another version of vdm?"
        ) from None
    module = VideoDiffusionModule(denoiser, build_diffusion(config), optimizer=None)
    module.to(device).eval()
    weights = "EMA" if "current_model_state" in checkpoint else "training"
    return LoadedRun(module, config, weights, int(checkpoint.get("global_step", 0)))


def class_labels(labels: list[int] | None, num_samples: int, num_classes: int) -> list[int] | None:
    """The label of each clip: ``labels`` cycled, or the classes in equal blocks (None for an
    unconditional model)."""
    if num_classes == 0:
        if labels:
            raise ValueError(
                f"labels={list(labels)} needs a class-conditional model; this one is "
                "unconditional (num_classes=0): leave labels=null."
            )
        return None
    if not labels:
        return [i * num_classes // num_samples for i in range(num_samples)]
    labels = [int(c) for c in labels]
    if any(not 0 <= c < num_classes for c in labels):
        raise ValueError(f"labels={labels}: this model knows classes 0..{num_classes - 1}.")
    return [labels[i % len(labels)] for i in range(num_samples)]


def _seed(*key: int) -> int:
    """A 63-bit seed from integers (independent streams for independent keys)."""
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & (2**63 - 1)


def sample_clips(
    module: VideoDiffusionModule,
    sampler: Sampler,
    clip_shape: tuple[int, int, int, int],
    labels: list[int] | None,
    num_samples: int,
    batch_size: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
    precision: str = "32-true",
    progress: bool = False,
) -> np.ndarray:
    """``num_samples`` clips of ``clip_shape = (C, T, H, W)`` as uint8 ``(N, T, H, W, C)``.

    Clip ``i`` starts from noise seeded by ``(seed, i)`` alone, so deterministic samplers give
    the same clip for any ``num_samples`` and ``batch_size``; the noise stochastic samplers add
    along the way is seeded per batch.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision}: use one of {', '.join(AUTOCAST_DTYPES)}.")
    if batch_size < 1 or num_samples < 1:
        raise ValueError(f"num_samples={num_samples}, batch_size={batch_size}: both must be ≥ 1.")
    device = module.device
    dtype = AUTOCAST_DTYPES[precision]
    clips = []
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        x_T = torch.stack(
            [
                module.diffusion.noise(
                    (1, *clip_shape), torch.Generator().manual_seed(_seed(seed, 0, i))
                )[0]
                for i in range(start, stop)
            ]
        ).to(device)
        y = None if labels is None else torch.tensor(labels[start:stop], device=device)
        generator = torch.Generator(device=device).manual_seed(_seed(seed, 1, start))
        autocast = torch.autocast(device.type, dtype) if dtype else contextlib.nullcontext()
        with autocast:
            videos = module.generate(
                sampler,
                tuple(x_T.shape),
                labels=y,
                guidance_scale=guidance_scale,
                generator=generator,
                progress=progress,
                x_T=x_T,
            )
        clips.append(to_uint8(videos.float()))
    return np.concatenate(clips)


def sample_as_configured(
    cfg: DictConfig, loaded: LoadedRun, sampler: Sampler, labels: list[int] | None
) -> tuple[np.ndarray, float]:
    """Sample with the keys that conf/sample.yaml and conf/evaluate.yaml share (num_samples,
    batch_size, guidance_scale, seed, frames, precision); return the clips and the guidance."""
    module, run_cfg = loaded.module, loaded.config
    guidance = guidance_for(cfg.guidance_scale, run_cfg, module.num_classes)
    size = run_cfg.data.size
    clip_shape = (run_cfg.model.in_channels, cfg.frames or run_cfg.data.clip_len, size, size)
    log.info(
        "Sampling %d clips of %s (C, T, H, W) with %s, guidance %g, %s weights",
        cfg.num_samples, clip_shape, sampler_name(sampler, module.diffusion.num_steps), guidance,
        loaded.weights,
    )  # fmt: skip
    videos = sample_clips(
        module,
        sampler,
        clip_shape,
        labels,
        cfg.num_samples,
        cfg.batch_size,
        guidance_scale=guidance,
        seed=cfg.seed,
        precision=cfg.precision,
        progress=True,
    )
    return videos, guidance


def guidance_for(scale: float | None, run_cfg: DictConfig, num_classes: int) -> float:
    """``scale``, or by default the run's sample-video guidance for conditional models and 1
    (none) for unconditional ones."""
    if scale is not None:
        return scale
    if num_classes == 0:
        return 1.0
    return OmegaConf.select(run_cfg, "callbacks.sample_videos.guidance_scale", default=1.0)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sampler_name(sampler: Sampler, num_steps: int) -> str:
    """``ddim50``, ``dpmsolver20``, ``ddpm1000``: names output folders."""
    kind = type(sampler).__name__.removesuffix("Sampler").lower()
    return f"{kind}{sampler.steps or num_steps}"


def run_dir_of(ckpt_path: Path) -> Path:
    """The training run folder of ``<run dir>/checkpoints/x.ckpt`` (else the file's folder)."""
    ckpt_path = Path(ckpt_path).expanduser().resolve()
    parent = ckpt_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def run(cfg: DictConfig) -> Path:
    """Sample as ``cfg`` (conf/sample.yaml) says; return the output folder."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ValueError(
            "ckpt_path is missing: python -m vdm.sample ckpt_path=<run dir>/checkpoints/last.ckpt"
        )
    loaded = load_run(cfg.ckpt_path, resolve_device(cfg.device))
    module = loaded.module
    sampler: Sampler = instantiate(cfg.sampler)
    labels = class_labels(cfg.labels, cfg.num_samples, module.num_classes)
    name = sampler_name(sampler, module.diffusion.num_steps)
    folder = f"{Path(cfg.ckpt_path).stem}-{name}-seed{cfg.seed}"
    out_dir = Path(cfg.out_dir or run_dir_of(cfg.ckpt_path) / "samples" / folder)
    start = time.perf_counter()
    videos, _ = sample_as_configured(cfg, loaded, sampler, labels)
    seconds = time.perf_counter() - start
    upscale = cfg.upscale or max(1, math.ceil(MIN_VIEW_SIZE / max(videos.shape[2:4])))
    # A row per class when the classes come in equal blocks; else a near-square grid.
    blocks = labels is not None and not cfg.labels and cfg.num_samples % module.num_classes == 0
    nrow = cfg.num_samples // module.num_classes if blocks else math.ceil(math.sqrt(len(videos)))
    write_npz(out_dir / "samples.npz", videos)
    write_clips(out_dir, videos, cfg.fps, upscale, nrow)
    print(
        f"Sampled {len(videos)} clips in {seconds:.1f} s ({seconds / len(videos):.2f} s/clip). "
        f"Wrote sample_0000.mp4 .. sample_{len(videos) - 1:04d}.mp4, grid.gif and samples.npz "
        f"to {out_dir}"
    )
    return out_dir


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


if __name__ == "__main__":
    main()
