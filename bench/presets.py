"""Training-step speed of every preset in conf/model on this machine.

    python bench/presets.py [--batch 4 --frames 8 --size 32 --repeats 5 --presets unet3d ...]
                            [--precisions fp32 bf16] [--mfu]

One step = forward + MSE + backward + AdamW, on a (batch, 3, frames, size, size) video, in
fp32 and under bf16 autocast. Prints parameters, median seconds per step and clips per second,
and the machine's fp32 / bf16 matmul throughput measured in the same run for context. ``--mfu``
adds the model FLOPs of a step and the MFU, computed as the training logs compute
``train/mfu`` (``vdm.training.flops``): compare them with a run's logs on the same machine.
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

from vdm.training.flops import training_flops_per_clip

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
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])  # fmt: skip
    parser.add_argument("--mfu", action="store_true", help="add model FLOPs and MFU columns")
    args = parser.parse_args()
    presets = args.presets or sorted(p.stem for p in (CONF / "model").glob("*.yaml"))

    print(header())
    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(f"# matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print(f"# batch {args.batch} x 3 x {args.frames} x {args.size}^2, median of {args.repeats}")
    columns = ["s/step", "clips/s"] + (["MFU"] if args.mfu else [])
    head = ["preset", "parameters"] + (["GFLOP/step"] if args.mfu else [])
    head += [f"{p} {c}" for p in args.precisions for c in columns]
    print(f"| {' | '.join(head)} |")
    print(f"|---|{'---:|' * (len(head) - 1)}")
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    for preset in presets:
        torch.manual_seed(0)
        model = build(preset).train()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        cells = [preset, f"{params:.2f} M"]
        if args.mfu:  # what train/mfu counts: one clip's forward + backward, times the batch
            flops = training_flops_per_clip(model, tuple(x.shape[1:])) * args.batch
            cells.append(f"{flops / 1e9:.1f}")
        for precision in args.precisions:
            step = step_seconds(model, x, bf16=precision == "bf16", repeats=args.repeats)
            cells += [f"{step:.3f}", f"{args.batch / step:.2f}"]
            if args.mfu:
                cells.append(f"{flops / step / 1e9 / peaks[precision]:.1%}")
        print(f"| {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
