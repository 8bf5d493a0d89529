"""Checks of how a run optimises, before any work: the optimizer's and the schedule's values,
the trainer's precision, EMA, and a resumed checkpoint's optimizer against this run's. Each bad
value is one line naming the key, what it is, and what is allowed."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vdm.errors import UserError

# Lightning's precision names (and the older ints and short strings it still takes).
PRECISIONS = (
    "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
    "transformer-engine", "transformer-engine-float16", "64", "32", "16", "bf16", 64, 32, 16,
)  # fmt: skip
# Optimizer keys whose change between a checkpoint and its resumed run breaks the restored
# state (the parameter groups follow weight decay: decayed and not), not just a value in it.
GROUPING_KEYS = ("_target_",)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def in_range(key: str, value, low: float, high: float | None, what: str, low_open=False) -> None:
    """``value`` must be a number in ``[low, high]`` (``(low, ...`` with ``low_open``)."""
    if value is None:
        return
    below = value <= low if low_open else value < low
    if not _number(value) or below or (high is not None and value > high):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        bound += f" and <= {high:g}" if high is not None else ""
        raise UserError(f"{key}={value}: must be a number {bound} ({what}).")


def check_optimization(cfg: DictConfig) -> None:
    """The optimizer, learning-rate schedule, precision and EMA values of ``cfg``."""
    optimizer = OmegaConf.select(cfg, "optimizer") or {}
    in_range("optimizer.lr", optimizer.get("lr"), 0, None, "the peak learning rate", True)
    in_range("optimizer.eps", optimizer.get("eps"), 0, None, "Adam's epsilon", True)
    in_range("optimizer.weight_decay", optimizer.get("weight_decay"), 0, None, "decoupled decay")
    betas = optimizer.get("betas")
    if betas is not None and (len(betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in betas)):
        raise UserError(
            f"optimizer.betas={list(betas)}: must be two numbers in [0, 1) (Adam's moment decays)."
        )
    schedule = OmegaConf.select(cfg, "lr_scheduler") or {}
    in_range("lr_scheduler.warmup_steps", schedule.get("warmup_steps"), 0, None, "steps")
    in_range("lr_scheduler.min_lr_ratio", schedule.get("min_lr_ratio"), 0, 1, "final lr / peak")
    precision = OmegaConf.select(cfg, "trainer.precision")
    if precision is not None and precision not in PRECISIONS:
        named = ", ".join(str(p) for p in PRECISIONS[:6])
        raise UserError(f"trainer.precision={precision}: use one of {named}.")
    ema = OmegaConf.select(cfg, "callbacks.ema") or {}
    in_range("callbacks.ema.decay", ema.get("decay"), 0, 1, "EMA decay per step")
    in_range("callbacks.ema.update_every_n_steps", ema.get("update_every_n_steps"), 1, None,
             "steps between EMA updates")  # fmt: skip
    in_range("callbacks.ema.update_starting_at_step", ema.get("update_starting_at_step"), 0,
             None, "the first step averaged")  # fmt: skip


def optimizer_mismatch(stored: dict, current: dict) -> str | None:
    """Why a checkpoint's optimizer state cannot continue under ``current`` (the optimizer
    config), or None. Weight decay switched on or off regroups the parameters; another class
    keeps another state."""
    changed = [k for k in GROUPING_KEYS if stored.get(k) != current.get(k)]
    decayed = [bool(c.get("weight_decay")) for c in (stored, current)]
    if decayed[0] != decayed[1]:
        changed.append("weight_decay")
    if not changed:
        return None
    differ = ", ".join(
        f"optimizer.{k}={stored.get(k)} there, {current.get(k)} here" for k in changed
    )
    return f"its optimizer config differs ({differ}): resume with the checkpoint's values"
