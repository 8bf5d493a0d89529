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
