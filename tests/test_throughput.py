"""Model FLOPs, peaks and the ThroughputLog callback: counts against closed forms, the
arithmetic of clips/s and MFU on a fake clock, and a short real run that logs both."""

import csv
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_run
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from vdm.cli.train import run
from vdm.training import flops
from vdm.training.flops import (
    compute_dtype,
    count_flops,
    gpu_peak_flops,
    matmul_flops,
    training_flops_per_clip,
)
from vdm.training.throughput import Mark, ThroughputLog, rates


def attention_inputs(device: str = "cpu") -> tuple[torch.Tensor, ...]:
    b, h, lq, lk, d = 2, 3, 16, 24, 8
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=generator) for n in (lq, lk, lk))
    return tuple(z.to(device).requires_grad_() for z in (q, k, v))


FORWARD = 4 * 2 * 3 * 16 * 24 * 8  # 4·B·H·Lq·Lk·d: QKᵀ and PV, 2·Lq·Lk·d each


def test_cpu_attention_counts_its_closed_form():
    q, k, v = attention_inputs()
    with FlopCounterMode(display=False) as counter:  # the formula registered for the CPU op
        F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == FORWARD
    assert [str(op) for op in counter.get_flop_counts()["Global"]] == [
        "aten._scaled_dot_product_flash_attention_for_cpu"
    ]
    with torch.no_grad():
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == FORWARD
    # Model FLOPs: backward is dQ, dK, dV and dP, twice the forward, no recomputed QKᵀ.
    step = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert step == 3 * FORWARD


def test_cpu_attention_counts_what_the_meta_device_counts():
    """On the meta device SDPA decomposes into bmm, which torch counts by itself."""

    def step(device: str) -> int:
        q, k, v = attention_inputs(device)
        return count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())

    assert step("cpu") == step("meta") == 3 * FORWARD


class ToyDenoiser(nn.Module):
    """Linear embedding → self-attention over all T·H·W positions → dropout → Linear back, with
    the denoisers' ``forward(x, t, labels, context)``: FLOPs known in closed form."""

    def __init__(self, channels: int, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed, self.qkv = nn.Linear(channels, dim), nn.Linear(dim, 3 * dim)
        self.out, self.drop, self.heads = nn.Linear(dim, channels), nn.Dropout(dropout), heads
        self.num_classes = 3  # takes labels (and ignores them)
        self.gradient_checkpointing = False

    def forward(self, x, t, labels=None, context=None):
        tokens = self.embed(x.flatten(2).transpose(1, 2))  # (B, N, dim)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            tokens = checkpoint(self.attend, tokens, use_reentrant=False)
        else:
            tokens = self.attend(tokens)
        return self.out(self.drop(tokens)).transpose(1, 2).reshape(x.shape)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(tokens).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(*qkv).transpose(1, 2).flatten(2)


def test_training_flops_of_a_toy_denoiser_follow_the_closed_form():
    c, t, h, w, dim = 3, 2, 4, 4, 16
    n = t * h * w  # tokens of one clip
    model = ToyDenoiser(c, dim, heads=2)
    model.gradient_checkpointing = True  # recomputation is not model FLOPs: off while counting
    # embed: forward + weight gradient (the clip needs no gradient); out: forward + input and
    # weight gradients; qkv: 3 × its forward; attention: 3 × 4·N·N·dim.
    expected = 4 * n * c * dim + 6 * n * dim * c + 3 * 2 * n * dim * 3 * dim + 3 * 4 * n * n * dim
    assert training_flops_per_clip(model, (c, t, h, w)) == expected
    assert model.gradient_checkpointing is True


def test_counting_leaves_rng_streams_parameters_and_grads_as_they_were():
    torch.manual_seed(0)
    model = ToyDenoiser(3, 16, heads=2, dropout=0.5)  # dropout draws from the global stream
    shape = (3, 2, 4, 4)
    grad = torch.randn_like(model.out.weight)
    model.out.weight.grad = grad
    kept = grad.clone()
    params = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    training_flops_per_clip(model, shape)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.out.weight.grad is grad and torch.equal(grad, kept)
    assert all(p.grad is None for name, p in model.named_parameters() if name != "out.weight")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))
    model(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))  # what the fork protects
    assert not torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("bf16-mixed", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
        ("16-mixed", torch.float16),
        ("32-true", torch.float32),
        ("64-true", torch.float64),
    ],
)
def test_compute_dtype_follows_the_precision(precision, dtype):
    assert compute_dtype(precision) == dtype


def test_gpu_peaks_from_vdm_table_then_from_lightning(monkeypatch):
    device = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert gpu_peak_flops(device, torch.bfloat16) == 989.5e12
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert gpu_peak_flops(device, torch.float32) == 67e12
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores
        assert gpu_peak_flops(device, torch.float32) == 494.5e12
    finally:
        torch.set_float32_matmul_precision(precision)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert gpu_peak_flops(device, torch.bfloat16) == 312e12  # Lightning's table
    assert "NVIDIA A100-SXM4-80GB" not in flops.GPU_PEAKS


def test_the_cpu_peak_is_measured_quickly_without_moving_the_rng():
    rng = torch.get_rng_state()
    peak = matmul_flops(torch.float32, seconds=0.1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert math.isfinite(peak) and peak > 1e8  # any CPU does more than 0.1 GFLOP/s


def test_rates_exclude_paused_time_and_count_every_rank():
    start = Mark(step=10, time=100.0, clips=20, paused=5.0)
    end = Mark(step=30, time=150.0, clips=60, paused=15.0)  # 50 s, 10 of them validating
    got = rates(start, end, world_size=2, flops_per_clip=1e9, peak=1e10)
    assert got["train/samples_per_s"] == pytest.approx(40 * 2 / 40)
    assert got["train/mfu"] == pytest.approx(1e9 * 40 / 40 / 1e10)
    assert "train/mfu" not in rates(start, end, 1, flops_per_clip=None, peak=1e10)
    assert "train/mfu" not in rates(start, end, 1, flops_per_clip=1e9, peak=None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeModule:
    """What ThroughputLog uses of a LightningModule: a denoiser, a device and ``log``."""

    def __init__(self) -> None:
        self.denoiser = ToyDenoiser(3, 16, heads=2)
        self.device = torch.device("cpu")
        self.logged: dict[int, dict[str, float]] = {}
        self.step = 0

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged.setdefault(self.step, {})[name] = value


def simulate(callback: ThroughputLog, steps: int, accumulate: int = 1, validate_at=()):
    """Batches of 2 clips taking 1 s each, ``accumulate`` batches per optimizer step, and
    100 s of validation after each step in ``validate_at``."""
    clock, module = callback.clock, FakeModule()
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=2, world_size=4)
    trainer.precision = "32-true"
    batch = {"video": torch.zeros(2, 3, 2, 4, 4)}
    callback.on_train_start(trainer, module)
    for i in range(steps * accumulate):
        callback.on_train_batch_start(trainer, module, batch, i)
        clock.now += 1.0
        if (i + 1) % accumulate == 0:
            trainer.global_step += 1
        module.step = trainer.global_step
        callback.on_train_batch_end(trainer, module, None, batch, i)
        if (i + 1) % accumulate == 0 and trainer.global_step in validate_at:
            callback.on_validation_start(trainer, module)
            clock.now += 100.0
    return module.logged


def test_throughput_log_averages_a_window_of_steps_at_the_logging_cadence():
    callback = ThroughputLog(window=4, peak_flops=1e10, clock=FakeClock())
    logged = simulate(callback, steps=12, validate_at=(5,))
    # Marks at step 1 (after warm-up) and every 2 steps; a figure once 4 steps are covered.
    assert sorted(logged) == [6, 8, 10, 12]
    per_clip = training_flops_per_clip(ToyDenoiser(3, 16, heads=2), (3, 2, 4, 4))
    for values in logged.values():  # 2 clips/s on each of 4 ranks; validation left out
        assert values["train/samples_per_s"] == pytest.approx(8.0)
        assert values["train/mfu"] == pytest.approx(per_clip * 2 / 1e10)


def test_throughput_log_counts_clips_of_every_accumulated_batch():
    callback = ThroughputLog(window=2, peak_flops=1e10, clock=FakeClock())
    logged = simulate(callback, steps=6, accumulate=3)
    assert sorted(logged) == [4, 6]
    assert logged[6]["train/samples_per_s"] == pytest.approx(2.0 * 4)  # 6 clips per 3 s


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match="callbacks.throughput.window=0"):
        ThroughputLog(window=0)


def test_a_short_run_logs_samples_per_second_and_mfu(tmp_path):
    run(
        compose_run(
            tmp_path,
            "trainer.max_steps=4",
            "callbacks.throughput.window=2",
            "callbacks.sample_videos=null",
        )
    )
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for name in ("train/samples_per_s", "train/mfu"):
        values = [float(r[name]) for r in rows if r.get(name)]
        assert values, name
        assert all(math.isfinite(v) and v > 0 for v in values), (name, values)
    assert all(0 < float(r["train/mfu"]) <= 1 for r in rows if r.get("train/mfu"))
