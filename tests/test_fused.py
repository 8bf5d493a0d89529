"""The fused ops equal the chains of PyTorch ops they replace, and keep less for backward."""

import pytest
import torch
import torch.nn.functional as F

from vdm.models.fused import gated_linear, norm_modulate


def saved_bytes(fn, *inputs) -> int:
    """Bytes of the distinct storages autograd keeps for backward while computing ``fn``."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*inputs)
    input_ptrs = {x.untyped_storage().data_ptr() for x in inputs}
    return sum(n for ptr, n in storages.items() if ptr not in input_ptrs)


def leaves(*shapes, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=generator, dtype=dtype).requires_grad_() for s in shapes]


def unfused_norm_modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift  # adaLN


def unfused_gated_linear(x, weight, bias, gate, gelu):
    hidden = F.gelu(x, approximate="tanh") if gelu else x
    return gate * F.linear(hidden, weight, bias)


def grads(fn, inputs, upstream):
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, upstream)


def test_norm_modulate_matches_layer_norm_then_modulate_with_gradients():
    x, shift, scale = leaves((2, 3, 5, 8), (2, 1, 1, 8), (2, 1, 1, 8))
    upstream = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    out, got = grads(norm_modulate, (x, shift, scale), upstream)
    ref_out, want = grads(unfused_norm_modulate, (x, shift, scale), upstream)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gated_linear_matches_gate_times_linear_with_gradients(gelu, with_bias):
    x, weight, bias, gate = leaves((3, 4, 5, 6), (7, 6), (7,), (3, 1, 1, 7))
    bias = bias if with_bias else None
    inputs = tuple(z for z in (x, weight, bias, gate) if z is not None)
    upstream = torch.randn(3, 4, 5, 7, dtype=torch.float64)

    def fused(*args):
        return gated_linear(args[0], args[1], bias, args[-1], gelu=gelu)

    def unfused(*args):
        return unfused_gated_linear(args[0], args[1], bias, args[-1], gelu)

    out, got = grads(fused, inputs, upstream)
    ref_out, want = grads(unfused, inputs, upstream)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_gated_linear_gradient_reaches_a_gate_that_starts_at_zero():
    # adaLN-Zero gates start at 0: their gradient must not depend on dividing by the gate.
    x, weight, bias = leaves((2, 3, 4), (5, 4), (5,))
    gate = torch.zeros(2, 1, 5, dtype=torch.float64, requires_grad=True)
    gated_linear(x, weight, bias, gate).sum().backward()
    expected = F.linear(x, weight, bias).sum(1, keepdim=True)
    torch.testing.assert_close(gate.grad, expected.detach())


def test_gated_linear_rejects_a_gate_per_token():
    x, weight = torch.randn(2, 3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="gate of shape"):
        gated_linear(x, weight, None, torch.randn(2, 3, 5))


def test_fused_ops_keep_fewer_bytes_for_backward():
    x, shift, scale = leaves((4, 8, 16, 32), (4, 1, 1, 32), (4, 1, 1, 32), dtype=torch.float32)
    # The unfused chain keeps the normed copy of x as well as x itself.
    assert saved_bytes(norm_modulate, x, shift, scale) < 0.6 * saved_bytes(
        unfused_norm_modulate, x, shift, scale
    )
    hidden, weight, bias, gate = leaves(
        (4, 8, 16, 128), (32, 128), (32,), (4, 1, 1, 32), dtype=torch.float32
    )
    # The unfused MLP tail also keeps the GELU output (as large as x) and the linear output.
    fused = saved_bytes(lambda *a: gated_linear(*a, gelu=True), hidden, weight, bias, gate)
    unfused = saved_bytes(
        lambda *a: unfused_gated_linear(*a, gelu=True), hidden, weight, bias, gate
    )
    assert fused < 0.1 * unfused


def test_fused_ops_follow_autocast_dtypes_like_the_ops_they_replace():
    x, shift, scale = leaves((2, 3, 8), (2, 1, 8), (2, 1, 8), dtype=torch.float32)
    weight, bias, gate = leaves((4, 8), (4,), (2, 1, 4), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mod = norm_modulate(x, shift.bfloat16(), scale.bfloat16())
        ref_mod = unfused_norm_modulate(x, shift.bfloat16(), scale.bfloat16())
        out = gated_linear(mod, weight, bias, gate.bfloat16(), gelu=True)
        ref = unfused_gated_linear(ref_mod, weight, bias, gate.bfloat16(), gelu=True)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.isfinite(weight.grad).all() and torch.isfinite(x.grad).all()
