"""Both denoisers behind one interface: shapes, labels, temporal mixing, checkpointing, bf16."""

import copy
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from vdm.inference.build import build_model
from vdm.models.unet3d import Level

CONF = Path(__file__).resolve().parents[1] / "conf"
# Every preset in conf/model runs every test; inputs are 16×16 so the base presets stay cheap.
# vdm's own denoisers (model=diffusers wraps a published one: tests/test_finetune.py)
PRESETS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "diffusers")
# For the costliest tests the 45-64 M base presets run in the slow suite (same code as the
# default and tiny presets, only wider), keeping the fast suite under 10 minutes.
PRESETS_BASE_SLOW = [
    pytest.param(p, marks=pytest.mark.slow) if p.endswith("_base") else p for p in PRESETS
]
# The zero-initialised layer that switches each temporal branch off at the start: the output
# projections of the U-Net's temporal conv and attention, the transformer's temporal gate.
TEMPORAL_OUT = re.compile(r"temporal_conv\.proj\.|temporal_attn\.attn\.out\.|temporal_modulation\.")


def make(preset, seed=0, num_classes=0, **overrides):
    """Build ``preset`` through Hydra's compose API, as train.py does (dropout off, so that
    outputs are deterministic in train mode)."""
    overrides = {"dropout": 0.0, **overrides}
    args = [f"model={preset}", "data.channels=3", f"data.num_classes={num_classes}"]
    args += [f"model.{k}={v}" for k, v in overrides.items()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=args)
    torch.manual_seed(seed)
    return build_model(cfg)


def train_steps(model, steps, x, labels=None, target=None, lr=1e-3, seed=0):
    """A few AdamW steps regressing ``target`` (default: the input) from ``x``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    target = x if target is None else target
    for _ in range(steps):
        t = torch.randint(0, 1000, (x.shape[0],), generator=g)
        loss = (model(x, t, labels) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def video(b=2, t=4, h=16, w=16, seed=1):
    return torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("shape", [(1, 4, 16, 16), (1, 8, 16, 32), (3, 1, 16, 16), (2, 13, 16, 16)])
def test_output_shape_equals_input_shape_for_any_frame_count(name, shape):
    model = make(name)
    b, t, h, w = shape
    x = torch.randn(b, 3, t, h, w)
    out = model(x, torch.randint(0, 1000, (b,)))
    assert out.shape == x.shape and out.dtype == torch.float32
    # float steps (continuous-time callers) are accepted too
    assert model(x, torch.rand(b) * 999).shape == x.shape


@pytest.mark.parametrize("name", PRESETS)
def test_labels_and_the_null_label_both_work_and_matter_once_trained(name):
    model = make(name, num_classes=3)
    x = video()
    train_steps(model, 1, x, labels=torch.tensor([0, 2]))
    t = torch.tensor([500, 500])
    with torch.no_grad():
        outs = [model(x, t, torch.tensor([c, c])) for c in range(3)]
        null = model(x, t, torch.tensor([3, 3]))
        assert torch.equal(model(x, t, None), null)  # None means the null label
    for i in range(3):
        assert not torch.allclose(outs[i], null)
        for j in range(i):
            assert not torch.allclose(outs[i], outs[j])


@pytest.mark.parametrize("name", PRESETS)
def test_bad_labels_are_clear_errors(name):
    x, t = video(), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="model.num_classes"):
        make(name)(x, t, torch.tensor([0, 1]))  # unconditional model given labels
    with pytest.raises(ValueError, match="model.num_classes"):
        make(name, num_classes=3)(x, t, torch.tensor([0, 4]))


def test_sizes_the_model_cannot_take_are_clear_errors():
    with pytest.raises(ValueError, match="channel_mult"):
        make("unet3d_tiny")(torch.randn(1, 3, 2, 15, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="patch_size"):
        make("transformer_tiny")(torch.randn(1, 3, 2, 18, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="temporal_patch_size"):
        make("transformer_tiny", temporal_patch_size=2)(
            torch.randn(1, 3, 3, 16, 16), torch.tensor([1])
        )


@pytest.mark.parametrize("name", PRESETS)
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(name):
    plain = make(name, num_classes=3)
    train_steps(plain, 1, video())  # move off the zero initialisation first
    ckpt = copy.deepcopy(plain)
    ckpt.gradient_checkpointing = True
    x, t, labels = video(seed=5), torch.tensor([10, 900]), torch.tensor([1, 3])
    outs, grads = [], []
    for model in (plain, ckpt):
        model.zero_grad()
        out = model(x, t, labels)
        out.pow(2).mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", PRESETS_BASE_SLOW)
def test_bf16_autocast_forward_and_backward_run_on_cpu(name):
    model = make(name, num_classes=3, qk_norm=True)
    train_steps(model, 1, video())
    x, t = video(), torch.tensor([3, 700])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, torch.tensor([0, 1]))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    reference = model(x, t, torch.tensor([0, 1]))
    assert (out.float() - reference).abs().mean() < 0.05 * reference.abs().mean() + 1e-3
    out.float().pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", PRESETS)
def test_temporal_branches_start_at_zero(name):
    model = make(name)
    temporal = [(n, p) for n, p in model.named_parameters() if TEMPORAL_OUT.search(n)]
    if name.startswith("unet3d"):  # a temporal conv and a temporal attention per level
        branches = 2 * sum(isinstance(m, Level) for m in model.modules())
    else:  # one temporal attention per block
        branches = len(model.blocks)
    assert len(temporal) == 2 * branches  # a weight and a bias each
    assert all(torch.count_nonzero(p) == 0 for _, p in temporal)


@pytest.mark.parametrize("name", PRESETS)
def test_without_temporal_paths_the_model_is_per_frame(name):
    """With the temporal output layers at zero (as at initialisation), shuffling the frames
    shuffles the output the same way, and frame 0 cannot reach the last frame."""
    model = train_steps(make(name, num_classes=3), 2, video(), labels=torch.tensor([0, 1]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if TEMPORAL_OUT.search(n):
                p.zero_()
    x, t, labels = video(t=6, seed=7), torch.tensor([100, 600]), torch.tensor([2, 0])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        out = model(x, t, labels)
        shuffled = model(x[:, :, perm], t, labels)
        assert out.abs().mean() > 1e-3  # a real output, not a zero one
        assert torch.allclose(shuffled, out[:, :, perm], atol=1e-5)
        bumped = x.clone()
        bumped[:, :, 0] += 1.0
        assert torch.allclose(model(bumped, t, labels)[:, :, -1], out[:, :, -1], atol=1e-5)


@pytest.mark.parametrize("name", PRESETS_BASE_SLOW)
def test_training_on_a_task_that_needs_other_frames_opens_the_temporal_paths(name):
    """Target at every frame = input frame 0: only temporal layers can solve it. Fresh, frame 0
    cannot reach the last frame at all; a few steps later it does."""
    model = make(name)
    x = video(b=4, t=5, seed=3)
    bumped = x.clone()
    bumped[:, :, 0] += 1.0
    t = torch.zeros(4, dtype=torch.long)

    def reach():
        with torch.no_grad():
            return (model(bumped, t)[:, :, -1] - model(x, t)[:, :, -1]).abs().mean().item()

    assert reach() == 0.0
    train_steps(model, 5, x, target=x[:, :, :1].expand_as(x), lr=1e-3)
    assert reach() > 1e-4


@pytest.mark.parametrize("name", PRESETS)
def test_every_parameter_gets_a_gradient_after_two_steps(name):
    model = make(name, num_classes=3, qk_norm=True)
    x, labels = video(b=4), torch.tensor([0, 1, 2, 3])  # 3 = the null label
    train_steps(model, 2, x, labels=labels)
    model.zero_grad()
    model(x, torch.tensor([1, 250, 500, 999]), labels).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_temporal_conv_is_a_3x1x1_convolution():
    from vdm.models.unet3d import TemporalConv

    torch.manual_seed(0)
    conv = TemporalConv(6)
    nn.init.normal_(conv.proj.weight)
    nn.init.normal_(conv.proj.bias)
    reference = nn.Conv3d(6, 6, (3, 1, 1), padding=(1, 0, 0))
    with torch.no_grad():  # proj rows are [W_prev; W_cur; W_next]
        reference.weight.copy_(conv.proj.weight.view(3, 6, 6).permute(1, 2, 0)[..., None, None])
        reference.bias.copy_(conv.proj.bias.view(3, 6).sum(0))
    x = torch.randn(2, 6, 5, 4, 3)  # (B, C, T, H, W)
    frames = x.permute(0, 2, 1, 3, 4).reshape(10, 6, 4, 3)
    frames = frames.contiguous(memory_format=torch.channels_last)
    out = conv(frames, 5).reshape(2, 5, 6, 4, 3).permute(0, 2, 1, 3, 4)
    # The bias of W_prev / W_next is absent where the neighbour is padding.
    expected = reference(x)
    expected[:, :, 0] -= conv.proj.bias.view(3, 6)[0][None, :, None, None]
    expected[:, :, -1] -= conv.proj.bias.view(3, 6)[2][None, :, None, None]
    assert torch.allclose(out, expected, atol=1e-5)


def space_to_depth(x, p):
    """(B, C, T, H, W) → (B, C·p², T, H/p, W/p), channel c·p² + a·p + b holding pixel
    (p·i + a, p·j + b): written out with reshapes, independently of torch's pixel_unshuffle."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p)
    return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def depth_to_space(x, p):
    """Inverse of :func:`space_to_depth`."""
    b, cpp, t, h, w = x.shape
    c = cpp // (p * p)
    x = x.reshape(b, c, p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, c, t, h * p, w * p)


def test_space_to_depth_reference_is_a_bijection_that_keeps_pixels():
    x = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 3, 2, 4, 6)
    folded = space_to_depth(x, 2)
    assert folded[1, 2 * 4 + 1 * 2 + 0, 1, 1, 2] == x[1, 2, 1, 2 * 1 + 1, 2 * 2 + 0]
    assert torch.equal(depth_to_space(folded, 2), x)


@pytest.mark.parametrize("p", [2, 4])
def test_patch_size_folds_pixels_into_channels_at_both_ends(p):
    """A patch-p U-Net on RGB video is exactly the patch-1 U-Net with the same weights on the
    space-to-depth video (3·p² channels), unfolded back: each output pixel comes from its own
    slot of its patch, in every frame."""
    patched = make("unet3d_tiny", num_classes=3, patch_size=p)
    train_steps(patched, 1, video(h=32, w=32), labels=torch.tensor([0, 1]))
    plain = make("unet3d_tiny", num_classes=3, in_channels=3 * p * p, out_channels=3 * p * p)
    plain.load_state_dict(patched.state_dict())
    x, t, labels = video(t=3, h=32, w=32, seed=4), torch.tensor([5, 800]), torch.tensor([2, 3])
    with torch.no_grad():
        out = patched(x, t, labels)
        expected = depth_to_space(plain(space_to_depth(x, p), t, labels), p)
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-5)


def test_patch_size_errors_name_the_key():
    from vdm.models import UNet3D

    with pytest.raises(ValueError, match="model.patch_size"):
        UNet3D(patch_size=0)
    # patch 2 × one downsampling: H and W must divide by 4
    with pytest.raises(ValueError, match="patch_size"):
        make("unet3d_tiny", patch_size=2)(torch.randn(1, 3, 2, 18, 16), torch.tensor([1]))
