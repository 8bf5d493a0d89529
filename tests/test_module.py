"""VideoDiffusionModule pieces: label dropout, fixed validation noise, generation, LR schedule."""

import functools
import math

import pytest
import torch

from vdm.diffusion import DDIMSampler, GaussianDiffusion, NoiseSchedule
from vdm.models import UNet3D
from vdm.training.module import VideoDiffusionModule
from vdm.training.optim import warmup_cosine


class LabelSpy(torch.nn.Module):
    """A denoiser that records the labels it is given and predicts zeros."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, t, labels=None):
        self.seen.append(labels)
        return x * self.weight


def make_module(denoiser, **kw):
    diffusion = GaussianDiffusion(NoiseSchedule(num_steps=100))
    return VideoDiffusionModule(
        denoiser, diffusion, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), **kw
    )


def batch(b=4000):
    return {"video": torch.zeros(b, 1, 1, 1, 1), "label": torch.full((b,), 2)}


def test_label_dropout_replaces_labels_with_the_null_label_at_the_given_rate():
    spy = LabelSpy()
    module = make_module(spy, label_dropout=0.25)
    module.training_step(batch(), 0)
    labels = spy.seen[-1]
    assert set(labels.unique().tolist()) == {2, 3}  # the real label or the null label 3
    assert (labels == 3).float().mean().item() == pytest.approx(0.25, abs=0.03)
    module.validation_step(batch(), 0)
    assert (spy.seen[-1] == 2).all()  # no dropout in validation


def test_validation_noise_is_fixed_per_batch_and_training_noise_follows_the_step():
    module = make_module(LabelSpy())
    b = {"video": torch.rand(8, 1, 2, 2, 2), "label": torch.zeros(8, dtype=torch.long)}
    first, _, t1 = module._loss(b, module._generator(1, 0, 0), 0.0)
    again, _, t2 = module._loss(b, module._generator(1, 0, 0), 0.0)
    other, _, _ = module._loss(b, module._generator(1, 1, 0), 0.0)
    assert torch.equal(t1, t2) and first == again and first != other


def test_unlabelled_data_for_a_conditional_model_names_the_fix():
    with pytest.raises(ValueError, match="data.num_classes=0"):
        make_module(LabelSpy()).training_step({"video": torch.zeros(2, 1, 1, 1, 1)}, 0)


def test_generate_checks_guidance_and_returns_the_asked_shape():
    torch.manual_seed(0)
    conditional = make_module(
        UNet3D(base_channels=8, channel_mult=(1,), attention_resolutions=(), heads=1, num_classes=2)
    )
    out = conditional.generate(
        DDIMSampler(steps=3), (2, 3, 5, 8, 8), labels=torch.tensor([0, 1]), guidance_scale=2.0
    )
    assert out.shape == (2, 3, 5, 8, 8) and out.abs().max() <= 1
    assert conditional.denoiser.training  # mode restored
    unconditional = make_module(
        UNet3D(base_channels=8, channel_mult=(1,), attention_resolutions=(), heads=1)
    )
    with pytest.raises(ValueError, match="guidance_scale=1"):
        unconditional.generate(DDIMSampler(steps=3), (1, 3, 2, 8, 8), guidance_scale=3.0)


def test_warmup_then_cosine_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    lrs = []
    for _ in range(130):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)


class StepSpy(torch.nn.Module):
    """An unconditional denoiser that records the noised input and timesteps of each call."""

    num_classes = 0

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, t, labels=None):
        self.seen.append((x.detach().clone(), t.clone()))
        return x * self.weight


def test_the_micro_batches_of_one_step_draw_their_own_timesteps_and_noise():
    from lightning import Trainer

    spy = StepSpy()
    module = make_module(spy)
    # The same (all-zero) clips in every batch: only the drawn t and ε can tell batches apart.
    loader = torch.utils.data.DataLoader([{"video": torch.zeros(1, 2, 4, 4)}] * 16, batch_size=8)
    trainer = Trainer(
        max_steps=2, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, loader)
    assert trainer.global_step == 2 and len(spy.seen) == 4  # 2 steps × 2 micro-batches
    (x0, t0), (x1, t1) = spy.seen[:2]  # the two micro-batches of step 0
    assert not torch.equal(t0, t1) and not torch.equal(x0, x1)
    # The first micro-batch draws what a run without accumulation draws at that step.
    plain = make_module(StepSpy())
    plain.training_step({"video": torch.zeros(8, 1, 2, 4, 4)}, 0)
    x_plain, t_plain = plain.denoiser.seen[-1]
    assert torch.equal(t0, t_plain) and torch.equal(x0, x_plain)
