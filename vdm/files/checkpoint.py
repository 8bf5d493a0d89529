"""vdm checkpoints: written atomically with a SHA-256 sidecar (``.checksum``), read safely
(``weights_only=True``, checksum and finite weights verified) with one-line errors."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from vdm.errors import MissingFileError, UserError

log = logging.getLogger(__name__)

# The sidecar's suffix. Not ".sha256": Lightning numbers hpc_ckpt_<n>.ckpt from every digit
# after "hpc_ckpt_" in a file name, so "hpc_ckpt_1.ckpt.sha256" would read as checkpoint 1256.
SIDECAR_SUFFIX = ".checksum"

# Keys of the model config that may change between runs without changing the weights.
RUNTIME_MODEL_KEYS = ("gradient_checkpointing", "dropout")
# Model keys added after checkpoints were first written, with the value an older one means.
ADDED_MODEL_KEYS = {"frame_conditioning": False}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_of(path: str | Path) -> Path:
    """``x.ckpt.checksum`` beside the file ``path`` points to (``last.ckpt`` is a link)."""
    real = Path(path).expanduser().resolve()
    return real.with_name(real.name + SIDECAR_SUFFIX)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, syncs it, records its SHA-256 in
    ``<name>.checksum`` (``sha256sum``'s format: ``sha256sum -c`` checks it) and only then
    renames it into place: a run killed while saving leaves the
    previous checkpoint whole, never a half-written one under its name."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temporary names that Lightning's hpc_ckpt_<n> numbering cannot mistake for a checkpoint.
        tmp = path.with_name(f".vdm-{uuid.uuid4().hex}.tmp")
        sidecar_tmp = tmp.with_suffix(".tmp-checksum")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            sidecar_tmp.write_text(f"{sha256_of(tmp)}  {path.name}\n")
            os.replace(tmp, path)
            os.replace(sidecar_tmp, path.with_name(path.name + SIDECAR_SUFFIX))
        finally:
            tmp.unlink(missing_ok=True)
            sidecar_tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """Lightning's load, after the checksum check: ``ckpt_path`` is checked before the run
        starts, this catches what Lightning finds itself (a requeued job's ``hpc_ckpt_*``)."""
        if Path(path).is_file():
            verify_checksum(Path(path), "checkpoint")
        kwargs = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(path, weights_only=weights_only, **kwargs)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + SIDECAR_SUFFIX).unlink(missing_ok=True)


def verify_checksum(path: Path, key: str) -> None:
    """Compare ``path`` with its sidecar; an older checkpoint without one loads with a warning."""
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        log.warning("%s=%s has no checksum file (written before vdm kept them): loaded unchecked",
                    key, path)  # fmt: skip
        return
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    if sha256_of(path) != expected:
        raise UserError(
            f"{key}={path} is corrupt: its SHA-256 differs from the one recorded in "
            f"{sidecar.name} when it was written; use an earlier checkpoint."
        )


def nonfinite_weights(checkpoint: dict) -> list[str]:
    """Names of the weights (EMA in ``state_dict``, training in ``current_model_state``) that
    hold a NaN or an infinity."""
    return [
        name
        for part in ("state_dict", "current_model_state")
        for name, value in (checkpoint.get(part) or {}).items()
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """Load a checkpoint written by ``python train.py`` (plain data only, no pickled code),
    after checking it against its SHA-256 sidecar; its weights must be finite.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a vdm checkpoint, is corrupt, or holds non-finite weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"{key}={path} does not exist: pass a checkpoint such as "
            "<run dir>/checkpoints/last.ckpt."
        )
    verify_checksum(path, key)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{key}={path} is not a vdm checkpoint: {reason[:200]}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint.get("hyper_parameters", {}):
        raise UserError(
            f"{key}={path} is not a vdm checkpoint (it stores no run config): use a "
            "checkpoint written by `python train.py`."
        )
    bad = nonfinite_weights(checkpoint)
    if bad:
        raise UserError(
            f"{key}={path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): use an "
            "earlier checkpoint."
        )
    return checkpoint


def model_config_mismatch(stored: dict, current: dict) -> list[str]:
    """Model config keys whose values differ (weights-relevant keys only)."""
    keys = (set(stored) | set(current)) - set(RUNTIME_MODEL_KEYS)
    stored, current = {**ADDED_MODEL_KEYS, **stored}, {**ADDED_MODEL_KEYS, **current}
    return sorted(k for k in keys if stored.get(k) != current.get(k))
