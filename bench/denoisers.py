"""vdm's denoisers against diffusers and video-diffusion-pytorch: one training step and one
inference call, side by side, on this machine.

    python bench/denoisers.py [--workloads W1 W2] [--precisions fp32 bf16] [--rounds 3 1]

A training step is forward + MSE + backward + AdamW. Each (model, workload, precision) runs in
its own subprocess, so its peak RSS is its own; the subprocesses of one round run one after the
other, and rounds repeat them (interleaved), so drift in the machine hits every model alike. The
tables give medians over all timed steps. FLOPs come from ``vdm.training.flops.count_flops``, as
in the training logs' ``train/mfu``: ``torch.utils.flop_counter`` with formulas for the CPU
attention kernels it misses (``scaled_dot_product_attention``: 4·Lq·Lk·d per head forward,
twice that backward). The matmul peak is measured in the same run, as the logs measure it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import version

import torch
import torch.nn.functional as F
from _anchors import MODELS, PAIRS, import_all  # bench/ is on sys.path: scripts run from it
from _machine import header, matmul_gflops

from vdm.training.flops import count_flops  # as train/mfu counts (gpu_estimate.py too)

WORKLOADS = {"W1": (4, 3, 8, 32, 32), "W2": (2, 3, 16, 64, 64)}  # (B, C, T, H, W)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# Peak RSS of the whole process, the part above the libraries every worker imports, and the
# activations autograd keeps for backward (allocator-free).
MEMORY_KINDS = (
    ("peak_rss_gb", "peak RSS"),
    ("model_rss_gb", "RSS above imports"),
    ("saved_gb", "memory kept for backward"),
)


class SavedActivations:
    """Bytes of the distinct storages autograd keeps for backward while active, parameters
    excluded: a training step's activation memory, whatever the allocator does with it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.sizes: dict[int, int] = {}

    def __enter__(self) -> SavedActivations:
        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.parameters:
                # Saved tensors stay alive until backward, so no two share an address.
                self.sizes[storage.data_ptr()] = storage.nbytes()
            return tensor

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    @property
    def gigabytes(self) -> float:
        return sum(self.sizes.values()) / 2**30


def worker(name: str, workload: str, precision: str, steps: int, flops: bool) -> dict:
    """Measure one model in this process; return the figures as a dict."""
    import_all()
    baseline_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # libraries only
    b, c, t, h, w = WORKLOADS[workload]
    torch.manual_seed(0)
    model = MODELS[name][1](t, h).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(b, c, t, h, w)
    timesteps = torch.randint(0, 1000, (b,))
    dtype = PRECISIONS[precision]

    def autocast():
        return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)

    def train_step() -> None:
        with autocast():
            out = model(x, timesteps)
        loss = F.mse_loss(out.float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def inference() -> None:
        with torch.no_grad(), autocast():
            model(x, timesteps)

    result = {"params": params, "config": {k: str(v) for k, v in model.config.items()}}
    with SavedActivations(model) as saved:  # the warm-up step
        if flops:
            result["train_flops"] = count_flops(train_step)
        else:
            train_step()
    result["saved_gb"] = saved.gigabytes
    if flops:
        result["infer_flops"] = count_flops(inference)
    else:
        inference()
    result["train_s"], result["infer_s"] = [], []
    for _ in range(steps):
        start = time.perf_counter()
        train_step()
        result["train_s"].append(time.perf_counter() - start)
        start = time.perf_counter()
        inference()
        result["infer_s"].append(time.perf_counter() - start)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["model_rss_gb"] = result["peak_rss_gb"] - baseline_gb  # what the model itself adds
    return result


def run_worker(name: str, workload: str, precision: str, steps: int, flops: bool) -> dict:
    command = [sys.executable, __file__, "--worker", name, workload, precision, str(steps)]
    if flops:
        command.append("--flops")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {workload} {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(workload: str, results: dict, peaks: dict) -> list[str]:
    """Markdown rows for one workload: every model at every precision measured."""
    b = WORKLOADS[workload][0]
    lines = [
        f"\n### {workload}: {' × '.join(map(str, WORKLOADS[workload]))} (B × C × T × H × W)\n",
        "| model | params | precision | train s/step | clips/s | vs anchor | GFLOP/s | % of "
        "matmul peak | inference s | peak RSS GB | above imports GB | kept for backward GB |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, wl, precision), r in results.items():
        if wl != workload:
            continue
        step = statistics.median(r["train_s"])
        infer = statistics.median(r["infer_s"])
        gflops = r["train_flops"] / step / 1e9
        ratios = []
        for ours, anchor in PAIRS:
            if name == ours and (anchor, wl, precision) in results:
                theirs = statistics.median(results[anchor, wl, precision]["train_s"])
                ratios.append(f"{theirs / step:.2f}× {anchor.split()[0]}")
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {precision} | {step:.3f} | {b / step:.2f} | "
            f"{', '.join(ratios) or '—'} | {gflops:.0f} | {100 * gflops / peaks[precision]:.0f}% "
            f"| {infer:.3f} | {r['peak_rss_gb']:.2f} | {r['model_rss_gb']:.2f} "
            f"| {r['saved_gb']:.2f} |"
        )
    return lines


def best(results: dict, name: str, workload: str) -> tuple[float, str]:
    """Highest clips/s of a model over the precisions measured, and which precision."""
    options = [
        (WORKLOADS[workload][0] / statistics.median(r["train_s"]), p)
        for (n, wl, p), r in results.items()
        if n == name and wl == workload
    ]
    return max(options)


def targets(results: dict, peaks: dict) -> list[str]:
    """The issue's targets for W1, each with its figure and whether it is met."""
    lines = ["\n### Targets (W1)\n", "| target | figure | met |", "|---|---:|---|"]

    def row(text: str, figure: float, goal: float, unit: str = "×") -> None:
        shown = f"{figure:.2f}{unit}" if unit == "×" else f"{figure:.0f}{unit}"
        lines.append(f"| {text} | {shown} | {'yes' if figure >= goal else 'no'} |")

    w = "W1"
    for ours, anchor, goal in [
        ("vdm UNet3D", "diffusers UNet3DConditionModel", 2.5),
        ("vdm UNet3D", "video-diffusion-pytorch Unet3D", 1.5),
    ]:
        if any(k[0] == anchor and k[1] == w for k in results):
            (a, pa), (o, po) = best(results, anchor, w), best(results, ours, w)
            row(f"{ours} ({po}) ≥ {goal}× {anchor} ({pa}) clips/s", o / a, goal)
    ours, anchor = "vdm SpaceTimeTransformer", "diffusers LatteTransformer3DModel"
    if (ours, w, "bf16") in results and (anchor, w, "bf16") in results:
        step = statistics.median(results[ours, w, "bf16"]["train_s"])
        theirs = statistics.median(results[anchor, w, "bf16"]["train_s"])
        row(f"{ours} ≥ 1.3× {anchor} clips/s in bf16", theirs / step, 1.3)
        gflops = results[ours, w, "bf16"]["train_flops"] / step / 1e9
        row(f"{ours} ≥ 55% of the bf16 matmul peak", 100 * gflops / peaks["bf16"], 55, "%")
    for ours, anchor in PAIRS:
        for p in PRECISIONS:
            if (ours, w, p) in results and (anchor, w, p) in results:
                for kind, what in MEMORY_KINDS:
                    ratio = results[ours, w, p][kind] / results[anchor, w, p][kind]
                    lines.append(
                        f"| {ours} {what} ≤ 0.6× {anchor} ({p}) | {ratio:.2f}× | "
                        f"{'yes' if ratio <= 0.6 else 'no'} |"
                    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 1],
                        help="interleaved rounds per workload (W1, W2)")  # fmt: skip
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 1],
                        help="timed steps per round per workload (W1, W2)")  # fmt: skip
    args = parser.parse_args()

    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(
        f"{header()}, diffusers {version('diffusers')}, "
        f"video-diffusion-pytorch {version('video-diffusion-pytorch')}"
    )
    print(f"# matmul peak (1024², same run): fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} "
          "GFLOP/s")  # fmt: skip
    results: dict[tuple[str, str, str], dict] = {}
    for workload in args.workloads:
        index = list(WORKLOADS).index(workload)  # --rounds / --steps are given per workload
        rounds = args.rounds[min(index, len(args.rounds) - 1)]
        steps = args.steps[min(index, len(args.steps) - 1)]
        for r in range(rounds):
            for name in args.models:
                for precision in args.precisions:
                    got = run_worker(name, workload, precision, steps, flops=r == 0)
                    key = (name, workload, precision)
                    if key in results:
                        results[key]["train_s"] += got["train_s"]
                        results[key]["infer_s"] += got["infer_s"]
                        for rss in ("peak_rss_gb", "model_rss_gb"):
                            results[key][rss] = max(results[key][rss], got[rss])
                    else:
                        results[key] = got
                    print(f"  {workload} round {r + 1}/{rounds}: {name} {precision} "
                          f"{statistics.median(got['train_s']):.2f} s/step", file=sys.stderr,
                          flush=True)  # fmt: skip
        for line in table(workload, results, peaks):
            print(line, flush=True)
    print("\n### Configurations\n")
    for name in args.models:
        r = next(v for k, v in results.items() if k[0] == name)
        print(f"- {name} ({r['params'] / 1e6:.2f} M): {r['config']}")
    if "W1" in args.workloads:
        print("\n".join(targets(results, peaks)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, workload, precision, steps = sys.argv[2:6]
        out = worker(name, workload, precision, int(steps), flops="--flops" in sys.argv)
        print(json.dumps(out))
    else:
        main()
