"""FLOPs of one training step of a GPU recipe, and the time the recipe takes at an assumed
hardware utilisation: the basis of the "~N days on 4 A100s" figure, stated instead of guessed.

    python bench/gpu_estimate.py [--experiment ucf101_unet3d --gpus 4 --peak-tflops 312 --mfu 0.35]
    python bench/gpu_estimate.py --experiment ucf101_latent --set autoencoder.latent_channels=4 \
        autoencoder.spatial_factor=8 autoencoder.temporal_factor=1 autoencoder.causal=false

A latent recipe's denoiser works on the autoencoder's latents: ``--set`` gives the geometry that
a run reads from the VAE's folder (the SD VAE: 4 channels, 8×8; Wan's: 16 channels, 4×8×8,
causal). The autoencoder's own encode / decode are left out (once per clip with the cache).

FLOPs are counted by ``torch.utils.flop_counter`` on one clip (forward + backward; attention
added where the counter misses it, as in bench/denoisers.py) and scaled to the recipe's global
batch. AdamW, the EMA update and data loading are left out (a few % at this size). The defaults
assume A100s: 312 TFLOP/s dense bf16 peak, 35 % of it reached (model FLOPs utilisation); a
measured step time on your GPUs replaces the assumption: days = steps × seconds per step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from denoisers import count_flops  # bench/ is on sys.path: scripts run from it
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"


def step_flops_per_clip(model_cfg, channels: int, frames: int, size: int) -> int:
    """Forward + backward FLOPs of the denoiser on one (channels, frames, size, size) clip."""
    torch.manual_seed(0)
    model = instantiate(model_cfg, _convert_="all").train()
    x = torch.randn(1, channels, frames, size, size)
    t = torch.tensor([500])
    labels = torch.tensor([0]) if model.num_classes else None

    def step() -> None:
        F.mse_loss(model(x, t, labels), x).backward()

    return count_flops(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="ucf101_unet3d")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs in all (DDP ranks)")
    parser.add_argument("--peak-tflops", type=float, default=312.0, help="per GPU, bf16 dense")
    parser.add_argument("--mfu", type=float, default=0.35, help="share of the peak reached")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides (latent geometry)")
    args = parser.parse_args()
    overrides = [f"experiment={args.experiment}", "data.root=/unused", *args.set]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data, steps, ae = cfg.data, cfg.trainer.max_steps, cfg.autoencoder
    spatial, temporal = ae.spatial_factor or 1, ae.temporal_factor or 1
    frames = 1 + (data.clip_len - 1) // temporal if ae.causal else data.clip_len // temporal
    per_clip = step_flops_per_clip(cfg.model, ae.latent_channels, frames, data.size // spatial)
    global_batch = data.batch_size * args.gpus * cfg.trainer.accumulate_grad_batches
    per_step = per_clip * global_batch
    seconds = per_step / (args.gpus * args.peak_tflops * 1e12 * args.mfu)
    params = sum(p.numel() for p in instantiate(cfg.model, _convert_="all").parameters())
    print(f"experiment={args.experiment}: {cfg.model._target_.rsplit('.', 1)[-1]} "
          f"{params / 1e6:.1f} M params, clips {data.clip_len}×{data.size}² "
          f"(denoiser input {ae.latent_channels}×{frames}×{data.size // spatial}²), "
          f"global batch {global_batch}, {steps} steps")  # fmt: skip
    print(f"training FLOPs: {per_clip / 1e9:.1f} GFLOP per clip, {per_step / 1e12:.2f} TFLOP "
          f"per step, {per_step * steps / 1e18:.1f} EFLOP in all")  # fmt: skip
    print(f"at {args.mfu:.0%} of {args.peak_tflops:.0f} TFLOP/s on {args.gpus} GPUs: "
          f"{seconds:.2f} s per step, {seconds * steps / 86400:.1f} days")  # fmt: skip


if __name__ == "__main__":
    main()
