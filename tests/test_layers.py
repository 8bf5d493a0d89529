"""Shared layers against closed forms and explicit reference implementations."""

import math

import pytest
import torch

from vdm.models.layers import (
    Attention,
    LabelEmbedder,
    RotaryEmbedding,
    apply_rotary,
    timestep_embedding,
)
from vdm.models.transformer import sincos_2d


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    emb = timestep_embedding(torch.tensor([0, 1, 250]), 8, max_period=10_000)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = [10_000 ** (-i / 4) for i in range(4)]
    expected = [math.cos(250 * f) for f in freqs] + [math.sin(250 * f) for f in freqs]
    assert emb[2].tolist() == pytest.approx(expected, abs=1e-4)
    assert timestep_embedding(torch.tensor([3.0]), 7).shape == (1, 7)  # odd dims are padded


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8)
    cos, sin = rope.cos_sin(20, torch.device("cpu"))
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        qm = apply_rotary(q.expand(20, 8), cos, sin)[m]
        kn = apply_rotary(k.expand(20, 8), cos, sin)[n]
        return (qm * kn).sum().item()

    assert score(3, 1) == pytest.approx(score(15, 13), abs=1e-4)
    assert score(0, 0) == pytest.approx((q * k).sum().item(), abs=1e-5)  # position 0: no turn
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    # a rotation keeps norms
    assert apply_rotary(q.expand(20, 8), cos, sin).norm(dim=-1) == pytest.approx(
        torch.full((20,), q.norm().item()), rel=1e-5
    )


def reference_attention(attn, x):
    """softmax(QKᵀ/√d)V written out, with the module's weights; x is (N, L, D)."""
    n, length, dim = x.shape
    q, k, v = attn.qkv(x).chunk(3, dim=-1)

    def heads(z):
        return z.view(n, length, attn.heads, attn.head_dim).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim), dim=-1)
    return attn.out((weights @ v).transpose(1, 2).reshape(n, length, dim))


def test_attention_matches_the_textbook_formula():
    torch.manual_seed(0)
    attn = Attention(16, heads=4)
    x = torch.randn(3, 7, 16)
    assert torch.allclose(attn(x), reference_attention(attn, x), atol=1e-5)


def test_attention_along_another_axis_equals_moving_that_axis_first():
    torch.manual_seed(0)
    attn = Attention(16, heads=2, qk_norm=True, rotary=True)
    x = torch.randn(2, 5, 6, 16)  # (B, T, S, D): attend over T at each S
    moved = x.transpose(1, 2).reshape(12, 5, 16)
    expected = attn(moved).reshape(2, 6, 5, 16).transpose(1, 2)
    assert torch.allclose(attn(x, seq_dim=1), expected, atol=1e-5)


def test_zero_init_attention_output_is_zero_and_heads_must_divide():
    assert Attention(8, 2, zero_init_out=True)(torch.randn(2, 3, 8)).abs().max() == 0
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4)


def test_label_embedder_has_a_null_row_and_checks_range():
    emb = LabelEmbedder(3, 4)
    assert emb.table.num_embeddings == 4
    null = emb(None, 2, torch.device("cpu"))
    assert torch.equal(null, emb.table.weight[[3, 3]])
    with pytest.raises(ValueError, match="num_classes"):
        emb(torch.tensor([-1]), 1, torch.device("cpu"))


def test_sincos_2d_positions_are_distinct_and_bounded():
    pos = sincos_2d(4, 6, 16, torch.device("cpu"))
    assert pos.shape == (24, 16) and pos.abs().max() <= 1.0
    assert torch.cdist(pos, pos).add(torch.eye(24)).min() > 1e-3  # all rows differ
    # the first half encodes the row, the second the column
    assert torch.equal(pos[0, :8], pos[5, :8]) and torch.equal(pos[0, 8:], pos[6, 8:])
