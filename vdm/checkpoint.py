"""Reading vdm checkpoints safely (``weights_only=True``) with one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

# Keys of the model config that may change between runs without changing the weights.
RUNTIME_MODEL_KEYS = ("gradient_checkpointing", "dropout")
# Model keys added after checkpoints were first written, with the value an older one means.
ADDED_MODEL_KEYS = {"frame_conditioning": False}


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """Load a checkpoint written by ``python train.py`` (plain data only, no pickled code).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a vdm checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}={path} does not exist: pass a checkpoint such as "
            "<run dir>/checkpoints/last.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{key}={path} is not a vdm checkpoint: {reason[:200]}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint.get("hyper_parameters", {}):
        raise ValueError(
            f"{key}={path} is not a vdm checkpoint (it stores no run config): use a "
            "checkpoint written by `python train.py`."
        )
    return checkpoint


def model_config_mismatch(stored: dict, current: dict) -> list[str]:
    """Model config keys whose values differ (weights-relevant keys only)."""
    keys = (set(stored) | set(current)) - set(RUNTIME_MODEL_KEYS)
    stored, current = {**ADDED_MODEL_KEYS, **stored}, {**ADDED_MODEL_KEYS, **current}
    return sorted(k for k in keys if stored.get(k) != current.get(k))
