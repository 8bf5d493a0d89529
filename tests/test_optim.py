"""Optimizer parameter groups: weight decay on projection weights only."""

import functools

import pytest
import torch
from torch import nn

from vdm.diffusion import GaussianDiffusion, NoiseSchedule
from vdm.models import SpaceTimeTransformer, UNet3D
from vdm.training.module import VideoDiffusionModule
from vdm.training.optim import parameter_groups


def names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("model_class", [UNet3D, SpaceTimeTransformer])
def test_norms_biases_and_embeddings_are_not_decayed(model_class):
    model = model_class(num_classes=3)
    decayed, not_decayed = parameter_groups(model)
    assert not_decayed["weight_decay"] == 0.0 and "weight_decay" not in decayed
    decay, keep = names(model, decayed), names(model, not_decayed)
    assert decay.isdisjoint(keep) and decay | keep == {n for n, _ in model.named_parameters()}
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner = modules[name.rpartition(".")[0]]
        expected_kept = p.ndim < 2 or isinstance(
            owner, nn.Embedding | nn.LayerNorm | nn.GroupNorm | nn.RMSNorm
        )
        assert (name in keep) == expected_kept, name
    # Sanity against the model's own layers: the class table is kept, a projection decayed.
    assert any("table" in n for n in keep) and any(n.endswith("bias") for n in keep)
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if n in decay)


def module_with(weight_decay: float) -> VideoDiffusionModule:
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=weight_decay)
    return VideoDiffusionModule(UNet3D(), GaussianDiffusion(NoiseSchedule()), optimizer=optimizer)


def test_the_optimizer_gets_two_groups_when_it_decays_weights():
    module = module_with(0.01)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))


def test_without_weight_decay_there_is_one_group_as_before():
    (group,) = module_with(0.0).configure_optimizers()["optimizer"].param_groups
    assert len(group["params"]) == len(list(module_with(0.0).parameters()))
