"""Optimizer parameter groups and learning-rate schedules (``conf/train.yaml: optimizer`` and
``lr_scheduler``, Hydra partials)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """Linear warm-up from 0 to the base learning rate over ``warmup_steps``, then cosine decay
    to ``min_lr_ratio`` × base at ``total_steps`` (constant after).

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        warmup_steps: optimizer steps of linear warm-up (0 = none).
        total_steps: step at which the decay ends (usually ``trainer.max_steps``).
        min_lr_ratio: final learning rate as a fraction of the base one.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


# Modules whose weights are scales, offsets or lookup rows, not projections: decaying them
# towards zero only hurts (the usual practice in GPT, DiT and diffusers' training scripts).
NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def parameter_groups(model: nn.Module) -> list[dict]:
    """``[{"params": decayed}, {"params": not_decayed, "weight_decay": 0.0}]`` for an optimizer.

    Not decayed: biases and every other parameter of fewer than 2 dimensions, and all the
    parameters of embeddings and normalisation layers. Everything else (the weights of linear
    and convolution layers) takes the optimizer's ``weight_decay``. Empty groups are left out.
    """
    no_decay = {
        id(p) for m in model.modules() if isinstance(m, NO_DECAY_MODULES) for p in m.parameters()
    }
    decayed, not_decayed = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (not_decayed if p.ndim < 2 or id(p) in no_decay else decayed).append(p)
    groups = [{"params": decayed}, {"params": not_decayed, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def optimizers_for(
    model: nn.Module,
    optimizer_factory: Callable[..., Optimizer],
    lr_scheduler_factory: Callable[[Optimizer], Any] | None,
) -> dict:
    """What a LightningModule's ``configure_optimizers`` returns: the optimizer over
    :func:`parameter_groups` (one group when nothing is decayed, as checkpoints written before
    the groups hold) and a per-step learning-rate schedule if there is one."""
    optimizer = optimizer_factory(parameter_groups(model))
    if not optimizer.defaults.get("weight_decay"):
        optimizer = optimizer_factory(model.parameters())
    if lr_scheduler_factory is None:
        return {"optimizer": optimizer}
    scheduler = lr_scheduler_factory(optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
