"""Given frames: mask mixtures, the loss, every sampler, the denoisers and long videos."""

import itertools
import math

import pytest
import torch
from gaussian_oracle import shared_frame_denoiser

from vdm.diffusion.context import ContextMasks, task_mask
from vdm.diffusion.extend import extend_video
from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, guided
from vdm.diffusion.schedule import NoiseSchedule
from vdm.models import SpaceTimeTransformer, UNet3D

SAMPLERS = {
    "ddpm": lambda: DDPMSampler(steps=20, clip_denoised=False),
    "ddim": lambda: DDIMSampler(steps=10, clip_denoised=False),
    "ddim_eta1": lambda: DDIMSampler(steps=10, eta=1.0, clip_denoised=False),
    "dpmpp": lambda: DPMSolverSampler(steps=10, clip_denoised=False),
}


def kind_of(row: torch.Tensor) -> str:
    """Which kind of mask a row is, read off its pattern (T = 16: coincidences are ~2^-16)."""
    frames, given = len(row), int(row.sum())
    k = int(row.int().argmin()) if not row.all() else frames
    if given == 0:
        return "none"
    if row[:k].all() and not row[k:].any() and k <= frames // 2:
        return "prefix"
    half = given // 2
    ends = torch.zeros(frames, dtype=torch.bool)
    ends[:half], ends[frames - half :] = True, True
    if given % 2 == 0 and torch.equal(row, ends) and half <= frames // 4:
        return "interpolate"
    return "random"


def test_mask_kinds_follow_their_shares_and_always_leave_a_frame_to_generate():
    shares = {"none": 0.3, "prefix": 0.35, "interpolate": 0.2, "random": 0.15}
    n = 20_000
    masks = ContextMasks(**shares).sample(n, 16, torch.Generator().manual_seed(0))
    assert masks.shape == (n, 16) and masks.dtype == torch.bool
    assert not masks.all(1).any()  # every clip has a generated frame
    kinds = [kind_of(row) for row in masks]
    for kind, share in shares.items():
        observed = kinds.count(kind) / n
        assert abs(observed - share) < 4 * math.sqrt(share * (1 - share) / n), (kind, observed)
    random_rows = masks[torch.tensor([k == "random" for k in kinds])]
    assert random_rows.any(1).all()  # a random subset gives at least one frame


def test_prefix_and_end_lengths_are_uniform_in_their_ranges():
    prefix = ContextMasks(none=0, prefix=1, interpolate=0, random=0)
    lengths = prefix.sample(8000, 8, torch.Generator().manual_seed(1)).sum(1)
    counts = torch.bincount(lengths, minlength=6)
    assert counts[0] == 0 and counts[5:].sum() == 0  # k in [1, T/2] = [1, 4]
    assert ((counts[1:5] / 8000 - 0.25).abs() < 0.03).all()
    ends = ContextMasks(none=0, prefix=0, interpolate=1, random=0)
    masks = ends.sample(8000, 8, torch.Generator().manual_seed(2))
    assert torch.equal(masks, masks.flip(1))  # symmetric: first k and last k
    assert set(masks.sum(1).tolist()) == {2, 4}  # k in [1, T/4] = [1, 2]


def test_short_clips_fall_back_to_no_context():
    masks = ContextMasks(none=0, prefix=0, interpolate=1, random=0).sample(50, 2)
    assert not masks.any()
    assert not ContextMasks(none=0, prefix=1, interpolate=0, random=0).sample(50, 1).any()


def test_bad_shares_are_clear_errors():
    with pytest.raises(ValueError, match="shares"):
        ContextMasks(none=-1)


def test_task_masks_and_their_errors():
    assert task_mask("predict", 8, 3).tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert task_mask("interpolate", 8, 2).tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert not task_mask("generate", 8, 4).any()
    with pytest.raises(ValueError, match="context.frames=8"):
        task_mask("predict", 8, 8)
    with pytest.raises(ValueError, match="context.frames=4"):
        task_mask("interpolate", 8, 4)
    with pytest.raises(ValueError, match="Unknown task=forecast"):
        task_mask("forecast", 8, 2)


# -- the loss ----------------------------------------------------------------------------------


def diffusion(prediction: str = "v") -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule("cosine", 1000), prediction, "min_snr")


def test_given_frames_enter_clean_at_step_zero_and_leave_the_loss():
    process = diffusion("x0")
    x0 = torch.randn(3, 2, 5, 4, 4)
    context = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    t = torch.tensor([700, 300, 900])
    noise = torch.randn_like(x0)
    seen = {}

    def model_fn(x, t_frames, context=None):
        seen.update(x=x, t=t_frames, context=context)
        return torch.zeros_like(x)  # ignores its input: the loss is the target's power

    loss, per_sample, _ = process.training_loss(model_fn, x0, t=t, noise=noise, context=context)
    given = context[:, None, :, None, None].expand_as(x0)
    assert torch.equal(seen["x"][given], x0[given])
    assert torch.equal(seen["x"][~given], process.q_sample(x0, t, noise)[~given])
    assert torch.equal(seen["t"], torch.where(context, 0, t[:, None]))
    assert torch.equal(seen["context"], context)
    # Another target on the given frames changes nothing.
    changed = torch.where(given, x0 + 10, x0)
    again, per_again, _ = process.training_loss(
        lambda x, t, context=None: torch.zeros_like(x), changed, t=t, noise=noise, context=context
    )
    assert torch.equal(loss, again) and torch.equal(per_sample, per_again)
    # The loss is the mean over generated frames of the squared target, times the weight.
    weights = process.loss_weight(t)
    for i in range(3):
        expected = x0[i][:, ~context[i]].pow(2).mean() * weights[i]
        assert torch.allclose(per_sample[i], expected, rtol=1e-6)


# -- samplers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_one_given_frame_of_shared_frame_data_fills_every_frame(name, prediction):
    """Frames all equal to one Gaussian vector: one clean frame fixes the others exactly."""
    process = GaussianDiffusion(NoiseSchedule("cosine", 100), prediction)
    oracle = shared_frame_denoiser(process.schedule.alphas_cumprod, prediction, 0.3, 0.5)
    frame = 0.3 + 0.5 * torch.randn(4, 2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    video = frame.expand(4, 2, 6, 3, 3).contiguous()
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[torch.arange(4), torch.tensor([0, 2, 5, 3])] = True  # one given frame, anywhere
    out = SAMPLERS[name]().sample(
        process, oracle, video.shape, generator=torch.Generator().manual_seed(1),
        context=(video * mask[:, None, :, None, None], mask),
    )  # fmt: skip
    assert torch.allclose(out, video, atol=1e-6), (out - video).abs().max()


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_oracle_notices_noisy_given_frames(name):
    """The exactness above needs the sampler's clean given frames: fed noisy copies instead
    (no context), the same oracle does not return the frame."""
    process = GaussianDiffusion(NoiseSchedule("cosine", 100), "v")
    oracle = shared_frame_denoiser(process.schedule.alphas_cumprod, "v", 0.3, 0.5)
    frame = 0.3 + 0.5 * torch.randn(4, 2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    video = frame.expand(4, 2, 6, 3, 3).contiguous()
    out = SAMPLERS[name]().sample(process, oracle, video.shape, torch.Generator().manual_seed(1))
    assert (out - video).abs().max() > 0.1


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("clip", [True, False])
def test_given_frames_come_back_bit_identical(name, clip):
    process = diffusion()
    sampler = SAMPLERS[name]()
    sampler.clip_denoised = clip
    torch.manual_seed(0)
    model = UNet3D(base_channels=8, channel_mult=[1], attention_resolutions=[], heads=2,
                   num_classes=2, frame_conditioning=True)  # fmt: skip
    video = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 1, 1]], dtype=torch.bool)
    model_fn = guided(model, torch.tensor([0, 1]), 2.0, null_label=2)
    out = sampler.sample(process, model_fn, video.shape, context=(video, mask))
    given = mask[:, None, :, None, None].expand_as(video)
    assert torch.equal(out[given], video[given])
    assert not torch.equal(out[~given], video[~given])


def test_guidance_keeps_the_context_in_both_halves():
    calls = []

    def model(x, t, labels, context=None):
        calls.append((labels.clone(), None if context is None else context.clone()))
        return torch.zeros_like(x)

    context = torch.tensor([[True, False]])
    guided(model, torch.tensor([1]), 3.0, null_label=5)(
        torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 2, dtype=torch.long), context=context
    )
    (labels, seen), = calls  # fmt: skip
    assert labels.tolist() == [1, 5] and seen.tolist() == [[True, False], [True, False]]


def test_context_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="context"):
        DDIMSampler(steps=2).sample(
            diffusion(), lambda x, t, context=None: x, (1, 1, 4, 2, 2),
            context=(torch.zeros(1, 1, 3, 2, 2), torch.zeros(1, 3, dtype=torch.bool)),
        )  # fmt: skip


# -- denoisers ---------------------------------------------------------------------------------

MODELS = {
    "unet3d": lambda **kw: UNet3D(
        base_channels=16, channel_mult=[1, 2], attention_resolutions=[2], heads=2, **kw
    ),
    "transformer": lambda **kw: SpaceTimeTransformer(hidden_size=32, depth=2, heads=2, **kw),
    "transformer_pt2": lambda **kw: SpaceTimeTransformer(
        hidden_size=32, depth=2, heads=2, temporal_patch_size=2, **kw
    ),
}


def trained_a_little(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised gates and projections too)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_without_given_frames_the_conditioned_model_equals_the_plain_one(name):
    """Same weights (the mask channel's at zero, as initialised): same outputs, and per-frame
    steps that are all equal give the per-clip result."""
    plain = trained_a_little(MODELS[name](num_classes=3))
    conditioned = MODELS[name](num_classes=3, frame_conditioning=True)
    state = conditioned.state_dict()
    for key, value in plain.state_dict().items():
        if state[key].shape == value.shape:
            state[key] = value
        else:  # the first layer: one more input channel, whose weights stay zero
            assert key in ("conv_in.weight", "patch_embed.weight")
            state[key] = torch.zeros_like(state[key])
            state[key][:, : value.shape[1]] = value
    conditioned.load_state_dict(state)
    x, t, y = torch.randn(2, 3, 4, 16, 16), torch.tensor([10, 600]), torch.tensor([0, 2])
    expected = plain(x, t, y)
    assert torch.allclose(conditioned(x, t, y), expected, atol=1e-5)
    per_frame = t[:, None].expand(2, 4)
    assert torch.allclose(plain(x, per_frame, y), expected, atol=1e-5)
    assert torch.allclose(conditioned(x, per_frame, y, context=None), expected, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_the_mask_and_per_frame_steps_reach_the_output(name):
    model = trained_a_little(MODELS[name](frame_conditioning=True))
    x = torch.randn(1, 3, 4, 16, 16)
    t = torch.tensor([[0, 0, 500, 500]])
    mask = torch.tensor([[True, True, False, False]])
    base = model(x, t, context=mask)
    assert base.shape == x.shape
    assert not torch.allclose(model(x, t, context=~mask), base)
    assert not torch.allclose(model(x, torch.tensor([[0, 0, 500, 900]]), context=mask), base)


def test_a_plain_model_refuses_given_frames_and_keeps_its_parameters():
    plain = MODELS["unet3d"]()
    conditioned = MODELS["unet3d"](frame_conditioning=True)
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert shapes.keys() == conditioned.state_dict().keys()
    assert conditioned.state_dict()["conv_in.weight"].shape[1] == shapes["conv_in.weight"][1] + 7
    x = torch.randn(1, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="context=mixed"):
        plain(x, torch.tensor([5]), context=torch.tensor([[True, False]]))
    plain(x, torch.tensor([5]), context=torch.tensor([[False, False]]))  # nothing given: fine


def test_an_older_checkpoint_config_still_matches_the_plain_model():
    from vdm.files.checkpoint import model_config_mismatch

    stored = {"_target_": "vdm.models.UNet3D", "base_channels": 16}  # written before the key
    assert model_config_mismatch(stored, {**stored, "frame_conditioning": False}) == []
    assert model_config_mismatch(stored, {**stored, "frame_conditioning": True}) == [
        "frame_conditioning"
    ]


# -- long videos -------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [None, 3])
def test_extension_joins_windows_without_repeats(first):
    """64 frames from an 8-frame window: each window's first k frames are the previous one's
    last k, and every frame of the result appears once, in order."""
    windows, counter = [], [0]

    def sample_window(video, mask, index):
        assert index == len(windows)
        out = video.clone()
        new = (~mask).sum().item()
        numbers = torch.arange(counter[0], counter[0] + new, dtype=torch.float)
        out[:, :, ~mask[0]] = numbers.view(1, 1, new, 1, 1)  # each new frame: the next number
        counter[0] += new
        windows.append((video.clone(), mask.clone(), out))
        return out

    opening = None if first is None else -torch.arange(1.0, first + 1).view(1, 1, first, 1, 1)
    video = extend_video(sample_window, (1, 1, 1, 1), 64, window=8, overlap=4, first=opening)
    assert video.shape == (1, 1, 64, 1, 1)
    values = video.flatten().tolist()
    generated = values[first or 0 :]
    assert generated == list(range(len(generated)))  # no frame twice, none missing
    if first:
        assert values[:first] == [-1.0, -2.0, -3.0]
    for (_, _, before), (given, mask, _) in itertools.pairwise(windows):
        assert mask[0].tolist() == [True] * 4 + [False] * 4
        assert torch.equal(given[:, :, :4], before[:, :, -4:])


def test_extension_errors_name_the_keys():
    with pytest.raises(ValueError, match="overlap"):
        extend_video(lambda v, m, i: v, (1, 1, 1, 1), 16, window=8, overlap=8)
    with pytest.raises(ValueError, match="context.frames"):
        extend_video(lambda v, m, i: v, (1, 1, 1, 1), 16, 8, 4, first=torch.zeros(1, 1, 8, 1, 1))


def test_clips_with_given_frames_get_their_own_weighting():
    process = GaussianDiffusion(
        NoiseSchedule("cosine", 1000), "v", "min_snr", context_loss_weighting="min_snr_plus_one"
    )
    x0, noise = torch.randn(2, 1, 4, 2, 2), torch.randn(2, 1, 4, 2, 2)
    t = torch.tensor([950, 950])
    context = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    _, per_sample, _ = process.training_loss(
        lambda x, t, context=None: torch.zeros_like(x), x0, t=t, noise=noise, context=context
    )
    target = process.target(x0, noise, t)
    plain = target[:, :, 1:].pow(2).mean(dim=(1, 2, 3, 4))
    assert torch.allclose(per_sample[0], plain[0] * process.loss_weight(t[:1], "min_snr_plus_one"))
    assert torch.allclose(per_sample[1], target[1].pow(2).mean() * process.loss_weight(t[1:]))
    snr = process.schedule.snr(950)
    assert process.loss_weight(t[:1], "min_snr_plus_one") == pytest.approx(1.0)  # γ > SNR + 1
    assert process.loss_weight(t[:1]) == pytest.approx(float(snr / (snr + 1)), rel=1e-5)


def test_context_weighting_names_its_key():
    with pytest.raises(ValueError, match="context.loss_weighting"):
        GaussianDiffusion(
            NoiseSchedule(), "eps", "min_snr", context_loss_weighting="min_snr_plus_one"
        )
    with pytest.raises(ValueError, match="context.loss_weighting"):
        GaussianDiffusion(NoiseSchedule(), "v", "min_snr", context_loss_weighting="max")
