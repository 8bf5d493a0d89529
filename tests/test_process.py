"""GaussianDiffusion: forward moments, target conversions, loss weighting and masking."""

import itertools

import pytest
import torch

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.schedule import NoiseSchedule

KINDS = ("eps", "x0", "v")


def make_diffusion(prediction="eps", weighting="uniform", **schedule_kw):
    return GaussianDiffusion(NoiseSchedule(**schedule_kw), prediction, weighting)


def test_q_sample_has_the_marginal_moments():
    diffusion = make_diffusion(kind="cosine")
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for step in (0, 400, 999):
        t = torch.full((n,), step)
        x0 = torch.full((n, 1), 0.7)
        x_t = diffusion.q_sample(x0, t, torch.randn(n, 1, generator=g))
        ab = diffusion.schedule.alphas_cumprod[step].item()
        assert x_t.mean().item() == pytest.approx(ab**0.5 * 0.7, abs=0.01)
        assert x_t.var().item() == pytest.approx(1 - ab, rel=0.02, abs=1e-5)


def _truth(schedule, t, shape=(6, 3, 2, 4, 4), seed=0):
    """x0, ε, x_t and v computed independently of GaussianDiffusion."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    ab = schedule.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    return {"x0": x0, "eps": eps, "v": v}, x_t


@pytest.mark.parametrize(("source", "dest"), list(itertools.product(KINDS, KINDS)))
def test_every_conversion_recovers_the_truth(source, dest):
    schedule = NoiseSchedule("linear")
    diffusion = GaussianDiffusion(schedule, prediction=source)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    truth, x_t = _truth(schedule, t)
    convert = {"x0": diffusion.predict_x0, "eps": diffusion.predict_eps, "v": diffusion.predict_v}
    got = convert[dest](x_t, t, truth[source])  # kind defaults to the diffusion's prediction
    assert torch.allclose(got, truth[dest], atol=1e-9)
    # and converted back, the original output is returned
    back = convert[source](x_t, t, got, kind=dest)
    assert torch.allclose(back, truth[source], atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_target_is_the_prediction_kind(kind):
    schedule = NoiseSchedule("cosine")
    t = torch.tensor([3, 30, 300, 600, 900, 999])
    truth, _ = _truth(schedule, t)
    diffusion = GaussianDiffusion(schedule, prediction=kind)
    assert torch.allclose(diffusion.target(truth["x0"], truth["eps"], t), truth[kind])


def _snr(schedule, t):
    """SNR at steps ``t`` from ᾱ directly, independently of the process's own tables."""
    ab = schedule.alphas_cumprod[t]
    return ab / (1 - ab)


def test_min_snr_weights_equal_the_formula():
    gamma = 5.0
    schedule = NoiseSchedule("linear")
    t = torch.tensor([0, 100, 200, 400, 999])
    snr = _snr(schedule, t)
    assert snr[0] > gamma > snr[-1]  # both sides of γ are exercised
    expected = {
        "eps": torch.minimum(snr, torch.tensor(gamma)) / snr,
        "x0": torch.minimum(snr, torch.tensor(gamma)),
        "v": torch.minimum(snr, torch.tensor(gamma)) / (snr + 1),
    }
    for kind in KINDS:
        diffusion = GaussianDiffusion(schedule, kind, "min_snr", min_snr_gamma=gamma)
        assert torch.allclose(diffusion.loss_weight(t).double(), expected[kind], rtol=1e-6)
        uniform = GaussianDiffusion(schedule, kind, "uniform")
        assert torch.equal(uniform.loss_weight(t), torch.ones(5))


def test_min_snr_plus_one_weights_equal_the_formula_and_keep_the_noisiest_steps():
    gamma = 5.0
    schedule = NoiseSchedule("cosine")
    t = torch.tensor([0, 300, 600, 900, 999])
    snr = _snr(schedule, t)
    assert snr[0] > gamma and snr[-1] < 1e-3  # both ends of the range
    x0_weight = torch.minimum(snr + 1, torch.tensor(gamma))
    expected = {"x0": x0_weight, "v": x0_weight / (snr + 1)}
    for kind, weights in expected.items():
        diffusion = GaussianDiffusion(schedule, kind, "min_snr_plus_one", min_snr_gamma=gamma)
        assert torch.allclose(diffusion.loss_weight(t).double(), weights, rtol=1e-6)
    v = GaussianDiffusion(schedule, "v", "min_snr_plus_one").loss_weight(t)
    v_min_snr = GaussianDiffusion(schedule, "v", "min_snr").loss_weight(t)
    assert v[-1].item() == pytest.approx(1.0) and v_min_snr[-1] < 1e-3  # the noisiest step
    assert v[0].item() == pytest.approx(v_min_snr[0].item())  # the same at low noise (SNR ≥ γ)
    zero_snr = GaussianDiffusion(NoiseSchedule(zero_terminal_snr=True), "v", "min_snr_plus_one")
    assert zero_snr.loss_weight(torch.tensor([999])).item() == 1.0


def test_min_snr_plus_one_for_eps_is_refused():
    with pytest.raises(ValueError, match="diffusion.prediction=v"):
        GaussianDiffusion(NoiseSchedule(), "eps", "min_snr_plus_one")


def test_min_snr_weights_the_x0_error_the_same_for_every_target():
    """min(SNR, γ)·|x̂0 - x0|² whatever the denoiser predicts: the point of target-relative
    weights. A denoiser off by δ in x0 is off by a kind-specific amount in its own target."""
    schedule = NoiseSchedule("linear")
    t = torch.tensor([5, 50, 150, 400, 800, 999])
    truth, x_t = _truth(schedule, t)
    delta = 0.1 * torch.randn(truth["x0"].shape, dtype=torch.float64)
    x0_hat = truth["x0"] + delta
    snr = _snr(schedule, t)
    expected = snr.clamp(max=5.0) * delta.pow(2).flatten(1).mean(1)
    for kind in KINDS:
        diffusion = GaussianDiffusion(schedule, kind, "min_snr")
        out = {"x0": diffusion.predict_x0, "eps": diffusion.predict_eps, "v": diffusion.predict_v}[
            kind
        ](x_t, t, x0_hat, kind="x0")
        _, per_sample, _ = diffusion.training_loss(
            lambda x, s, out=out: out, truth["x0"], t=t, noise=truth["eps"]
        )
        assert torch.allclose(per_sample.double(), expected, rtol=1e-4), kind


def test_training_loss_of_the_exact_target_is_zero_and_of_zero_is_the_target_power():
    diffusion = make_diffusion("v", kind="cosine")
    x0 = torch.rand(4, 3, 5, 8, 8) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([0, 10, 500, 999])
    target = diffusion.target(x0, noise, t)
    loss, per_sample, t_out = diffusion.training_loss(lambda x, s: target, x0, t=t, noise=noise)
    assert loss.item() == 0.0 and torch.equal(t_out, t)
    loss, per_sample, _ = diffusion.training_loss(
        lambda x, s: torch.zeros_like(x), x0, t=t, noise=noise
    )
    assert torch.allclose(per_sample, target.pow(2).flatten(1).mean(1))
    assert loss.item() == pytest.approx(per_sample.mean().item())


def test_training_loss_draws_steps_in_range_and_passes_conditions():
    diffusion = make_diffusion(num_steps=10)
    seen = {}

    def model_fn(x, t, labels):
        seen["labels"], seen["t"] = labels, t
        return torch.zeros_like(x)

    x0 = torch.zeros(64, 1, 2, 2, 2)
    labels = torch.arange(64)
    loss, per_sample, t = diffusion.training_loss(model_fn, x0, labels=labels)
    assert per_sample.shape == (64,) and t.dtype == torch.long
    assert t.min() >= 0 and t.max() < 10 and len(t.unique()) > 1
    assert torch.equal(seen["labels"], labels) and torch.equal(seen["t"], t)
    # eps target on zero data with a zero model: the loss is the noise power, ≈ 1.
    assert loss.item() == pytest.approx(1.0, abs=0.15)


def test_loss_mask_leaves_masked_frames_out():
    diffusion = make_diffusion("x0")
    x0 = torch.zeros(2, 3, 4, 2, 2)
    out = torch.zeros_like(x0)
    out[:, :, 0] = 10.0  # a huge error, only on frame 0
    out[1, :, 3] = 1.0  # error 1 on the last frame of sample 1
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    t = torch.tensor([5, 5])
    _, per_sample, _ = diffusion.training_loss(lambda x, s: out, x0, t=t, loss_mask=mask)
    assert per_sample.tolist() == pytest.approx([0.0, 1.0 / 3.0])
    _, unmasked, _ = diffusion.training_loss(lambda x, s: out, x0, t=t)
    assert unmasked[0].item() == pytest.approx(25.0)
    all_masked = torch.zeros(2, 4)
    loss, _, _ = diffusion.training_loss(lambda x, s: out, x0, t=t, loss_mask=all_masked)
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="loss_mask"):
        diffusion.training_loss(lambda x, s: out, x0, t=t, loss_mask=torch.ones(2, 3))


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="diffusion.prediction"):
        make_diffusion("score")
    with pytest.raises(ValueError, match="diffusion.loss_weighting"):
        make_diffusion("eps", "p2")
    with pytest.raises(ValueError, match="prediction=v"):
        make_diffusion("eps", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="out_channels"):
        make_diffusion().training_loss(lambda x, t: x[:, :1], torch.zeros(2, 3, 1, 2, 2))


def test_min_snr_with_zero_terminal_snr_stays_finite():
    diffusion = GaussianDiffusion(NoiseSchedule(zero_terminal_snr=True), "v", "min_snr")
    weights = diffusion.loss_weight(torch.tensor([0, 999]))
    assert torch.isfinite(weights).all() and weights[1].item() == 0.0
