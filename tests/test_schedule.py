"""Noise schedules against their closed forms."""

import math

import pytest
import torch

from vdm.diffusion.schedule import NoiseSchedule


def test_linear_betas_are_the_ddpm_ramp():
    schedule = NoiseSchedule("linear", num_steps=1000, beta_start=1e-4, beta_end=0.02)
    assert schedule.betas.dtype == torch.float64
    assert schedule.alphas_cumprod.dtype == torch.float64
    assert schedule.betas.shape == (1000,)
    for t in (0, 1, 500, 999):
        assert schedule.betas[t].item() == pytest.approx(1e-4 + (0.02 - 1e-4) * t / 999, rel=1e-12)


def test_alphas_cumprod_is_the_product_of_one_minus_beta():
    schedule = NoiseSchedule("linear", num_steps=50)
    for t in (0, 7, 49):
        expected = math.prod(1 - schedule.betas[s].item() for s in range(t + 1))
        assert schedule.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-12)
    # Index 0 is the least noisy step.
    assert schedule.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)


def test_scaled_linear_is_linear_in_sqrt_beta():
    schedule = NoiseSchedule("scaled_linear", num_steps=11, beta_start=0.00085, beta_end=0.012)
    sqrt_b = schedule.betas.sqrt()
    steps = sqrt_b[1:] - sqrt_b[:-1]
    assert torch.allclose(steps, torch.full_like(steps, (0.012**0.5 - 0.00085**0.5) / 10))
    assert schedule.betas[0].item() == pytest.approx(0.00085)
    assert schedule.betas[-1].item() == pytest.approx(0.012)


def test_cosine_alpha_bar_follows_the_closed_form():
    num_steps, s = 1000, 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    schedule = NoiseSchedule("cosine", num_steps=num_steps)
    # Where no β is clipped, ᾱ_t telescopes to f((t+1)/T) / f(0).
    for t in (0, 10, 300, 900):
        assert schedule.alphas_cumprod[t].item() == pytest.approx(
            f((t + 1) / num_steps) / f(0), rel=1e-9
        )
    assert schedule.betas.max().item() == pytest.approx(0.999)  # the last β is clipped
    assert schedule.betas[-1].item() == pytest.approx(0.999)


def test_sigmoid_is_a_scaled_sigmoid_of_linspace_minus6_to_6():
    schedule = NoiseSchedule("sigmoid", num_steps=5, beta_start=1e-4, beta_end=0.02)
    for i, u in enumerate((-6.0, -3.0, 0.0, 3.0, 6.0)):
        expected = 1e-4 + (0.02 - 1e-4) / (1 + math.exp(-u))
        assert schedule.betas[i].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_zero_terminal_snr_ends_at_zero_and_keeps_the_first_step(kind):
    plain = NoiseSchedule(kind, num_steps=1000)
    rescaled = NoiseSchedule(kind, num_steps=1000, zero_terminal_snr=True)
    assert rescaled.alphas_cumprod[-1].item() == 0.0
    assert rescaled.snr(999).item() == 0.0
    assert rescaled.betas[-1].item() == pytest.approx(1.0)
    assert rescaled.alphas_cumprod[0].item() == pytest.approx(
        plain.alphas_cumprod[0].item(), rel=1e-12
    )
    # Still a valid, monotone schedule.
    assert torch.all(rescaled.alphas_cumprod[1:] < rescaled.alphas_cumprod[:-1])


def test_zero_terminal_snr_is_an_affine_map_of_sqrt_alpha_bar():
    plain = NoiseSchedule("linear", num_steps=100)
    rescaled = NoiseSchedule("linear", num_steps=100, zero_terminal_snr=True)
    a, b = plain.alphas_cumprod.sqrt(), rescaled.alphas_cumprod.sqrt()
    expected = (a - a[-1]) * a[0] / (a[0] - a[-1])  # Lin et al. 2023, Algorithm 1
    assert torch.allclose(b, expected, rtol=1e-10, atol=1e-12)


def test_snr_is_alpha_bar_over_one_minus_alpha_bar():
    schedule = NoiseSchedule("cosine", num_steps=100)
    t = torch.tensor([0, 50, 99])
    ab = schedule.alphas_cumprod[t]
    assert torch.equal(schedule.snr(t), ab / (1 - ab))
    assert torch.all(schedule.snr(torch.arange(100)).diff() < 0)  # noisier = lower SNR


def test_bad_arguments_name_the_config_key():
    with pytest.raises(ValueError, match="schedule.kind"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule(num_steps=0)
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule(beta_start=0.1, beta_end=0.01)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("shift", [0.5, 2.0, 4.0])
def test_snr_shift_divides_every_snr_by_its_square(kind, shift):
    plain = NoiseSchedule(kind, num_steps=1000)
    shifted = NoiseSchedule(kind, num_steps=1000, snr_shift=shift)
    t = torch.arange(1000)
    torch.testing.assert_close(shifted.snr(t), plain.snr(t) / shift**2, rtol=1e-9, atol=0)
    assert (shifted.betas > 0).all() and (shifted.betas < 1).all()


def test_snr_shift_of_one_is_the_named_schedule_and_must_be_positive():
    assert torch.equal(NoiseSchedule("cosine", snr_shift=1.0).betas, NoiseSchedule("cosine").betas)
    with pytest.raises(ValueError, match="schedule.snr_shift"):
        NoiseSchedule("cosine", snr_shift=0.0)


def test_snr_shift_is_cogvideox_snr_shift_scale_applied_before_the_zero_terminal_rescale():
    """CogVideoX's scheduler maps ᾱ to ᾱ/(s + (1-s)·ᾱ) (SNR/s), then rescales ᾱ to zero terminal
    SNR: ``snr_shift = sqrt(s)`` in the same order is that table."""
    s = 3.0
    base = NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    shifted = base / (s + (1 - s) * base)
    root = shifted.sqrt()
    expected = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2  # Lin et al., Alg. 1
    schedule = NoiseSchedule(
        "scaled_linear", beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True,
        snr_shift=math.sqrt(s),
    )  # fmt: skip
    torch.testing.assert_close(schedule.alphas_cumprod, expected, rtol=0, atol=1e-12)
    # The order matters: the shift after the rescale is another table.
    root = base.sqrt()
    rescaled = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2
    other = rescaled / (s + (1 - s) * rescaled)
    assert (other - schedule.alphas_cumprod).abs().max() > 1e-3
