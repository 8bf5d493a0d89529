"""Learning-rate schedules used through Hydra partials (``conf/train.yaml: lr_scheduler``)."""

from __future__ import annotations

import math

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
