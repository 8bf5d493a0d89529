"""Training-step speed of every preset in conf/model on this machine.

    python bench/presets.py [--batch 4 --frames 8 --size 32 --repeats 5 --presets unet3d ...]

One step = forward + MSE + backward + AdamW, on a (batch, 3, frames, size, size) video, in
fp32 and under bf16 autocast. Prints parameters, median seconds per step and clips per second,
and the machine's fp32 / bf16 matmul throughput measured in the same run for context.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _machine import header, matmul_gflops
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"


def build(preset: str) -> torch.nn.Module:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={preset}"])
    return instantiate(cfg.model, _convert_="all")


def step_seconds(model: torch.nn.Module, x: torch.Tensor, bf16: bool, repeats: int) -> float:
    """Median wall time of one training step, after one warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t = torch.randint(0, 1000, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(x.shape[0], dtype=torch.long) if model.num_classes else None

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, labels)
        loss = torch.nn.functional.mse_loss(out.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=None, help="default: all of conf/model")
    args = parser.parse_args()
    presets = args.presets or sorted(p.stem for p in (CONF / "model").glob("*.yaml"))

    print(header())
    print(
        f"# matmul peak: fp32 {matmul_gflops(torch.float32):.0f} GFLOP/s, "
        f"bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s"
    )
    print(f"# batch {args.batch} x 3 x {args.frames} x {args.size}^2, median of {args.repeats}")
    print("| preset | parameters | fp32 s/step | fp32 clips/s | bf16 s/step | bf16 clips/s |")
    print("|---|---:|---:|---:|---:|---:|")
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    for preset in presets:
        torch.manual_seed(0)
        model = build(preset).train()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        fp32 = step_seconds(model, x, bf16=False, repeats=args.repeats)
        bf16 = step_seconds(model, x, bf16=True, repeats=args.repeats)
        print(
            f"| {preset} | {params:.2f} M | {fp32:.3f} | {args.batch / fp32:.2f} | "
            f"{bf16:.3f} | {args.batch / bf16:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
