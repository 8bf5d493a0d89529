"""The benchmark's own arithmetic: FLOP counting with attention, and the anchors' call shapes."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _anchors import MODELS
from denoisers import SavedActivations, count_flops


def test_attention_flops_follow_the_standard_formula():
    """QKᵀ and PV: 2·L·L·d multiply-adds each, per head; backward counts twice the forward."""
    b, h, lq, lk, d = 2, 3, 16, 24, 8
    q = torch.randn(b, h, lq, d, requires_grad=True)
    k, v = torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
    forward = 2 * b * h * lq * lk * (d + d)
    with torch.no_grad():
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == (
        3 * forward
    )


def test_matmul_flops_come_from_torch_flop_counter():
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    assert count_flops(lambda: a @ b) == 2 * 5 * 7 * 3


@pytest.mark.parametrize("name", list(MODELS))
def test_every_benchmarked_model_maps_a_video_to_its_shape(name):
    if "video-diffusion-pytorch" in name and not importlib.util.find_spec(
        "video_diffusion_pytorch"
    ):
        pytest.skip("video-diffusion-pytorch is installed by `make bench` only")
    torch.manual_seed(0)
    model = MODELS[name][1](4, 32)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert model(x, torch.tensor([500])).shape == x.shape


def test_saved_activations_count_what_backward_keeps_without_parameters():
    """Linear keeps its input (its weight is a parameter), ReLU its output; a view is not new."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    x = torch.randn(100, 64, requires_grad=True)
    with SavedActivations(model) as saved:
        out = model(x)
        (out.view(-1) * 2.0).sum().backward()
    assert saved.gigabytes * 2**30 == x.nbytes + out.nbytes


TINY = dict(layers=2, heads=2, head_dim=8, ffn=32, text_dim=16, channels=4, frames=2, size=8,
            batch=2, text_tokens=4, rank=2)  # fmt: skip


@pytest.fixture(scope="module")
def finetune_runs(tmp_path_factory):
    """bench/finetune.py's four configurations of a tiny Wan transformer, prepared."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from finetune import MAIN, Batch, Sizes, prepare, save_transformer

    sizes = Sizes(**TINY)
    folder = save_transformer(tmp_path_factory.mktemp("wan"), sizes)
    batch = Batch.make(sizes)
    return {name: prepare(folder, name, sizes, batch) for name in MAIN}


def test_finetune_bench_checks_pass_and_catch_a_broken_gradient(finetune_runs):
    """Equal step-0 losses and gradients with and without checkpointing; a gradient that
    differs stops the bench."""
    from finetune import check

    lines = check(finetune_runs)
    assert "equal" in lines[0] and all("agree" in line for line in lines[1:])
    name = next(n for n in finetune_runs["LoRA + ckpt"].grads0 if "lora_B" in n)
    finetune_runs["LoRA + ckpt"].grads0[name] += 1.0
    try:
        with pytest.raises(SystemExit, match="LoRA gradients"):
            check(finetune_runs)
    finally:
        finetune_runs["LoRA + ckpt"].grads0[name] -= 1.0


def test_finetune_bench_memory_parts_follow_the_parameters(finetune_runs):
    """Gradients and AdamW moments of the trainable parameters alone; checkpointing keeps the
    blocks' inputs instead of their activations, and each block is measured apart."""
    full, lora = finetune_runs["full"], finetune_runs["LoRA"]
    ckpt = finetune_runs["LoRA + ckpt"]
    assert full.grad_bytes == full.param_bytes == 4 * full.trainable_count
    assert lora.grad_bytes == 4 * lora.trainable_count < full.grad_bytes / 5
    assert lora.adam_bytes == 2 * lora.grad_bytes
    hidden_states = TINY["batch"] * TINY["frames"] * (TINY["size"] // 2) ** 2 * 8 * 2 * 4
    assert ckpt.kept.block_inputs == TINY["layers"] * hidden_states
    assert sum(ckpt.kept.blocks) == 0 and ckpt.plain.blocks == lora.kept.blocks
    assert ckpt.kept.total < lora.kept.total
    assert ckpt.flops > lora.flops  # the recompute


def test_finetune_estimate_counts_tokens_as_the_pipelines_do():
    """Latent frames through a causal VAE, then patches: Wan 81 × 480 × 832 is 21 × 30 × 52."""
    from finetune_estimate import ROWS, line

    assert ROWS["wan-1.3b-832"].tokens == 21 * 30 * 52
    assert ROWS["cogvideox-2b-480"].tokens == 13 * 30 * 30
    assert ROWS["ltx-512"].tokens == 16 * 16 * 16
    fit = line((192, 1000.0), (768, 3880.0))
    assert fit.per_token == 5.0 and fit.at(0) == 40.0
