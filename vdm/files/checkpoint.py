"""vdm checkpoints: written atomically with a SHA-256 sidecar (``.checksum``), read as data only
(``weights_only=True``) after the file is verified (:mod:`vdm.files.verify`), with one-line
errors."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from vdm.errors import UserError
from vdm.files.verify import (
    SIDECAR_SUFFIX,
    load_plain,
    sha256_of,
    verify_checkpoint_file,
)

log = logging.getLogger(__name__)


# Keys of the model config that may change between runs without changing the weights.
# Model keys that do not change the weights. A published model's ``path`` is where its base lies
# (the checkpoint's fingerprint, compared on load, says whether it is the same base); its
# ``dtype`` is how it is held in memory.
RUNTIME_MODEL_KEYS = ("gradient_checkpointing", "dropout", "path", "dtype")
# Model keys added after checkpoints were first written, with the value an older one means.
ADDED_MODEL_KEYS = {"frame_conditioning": False}


def save_failure(path: Path, error: OSError, saved: bool) -> str:
    """The one line for an ``OSError`` while saving the checkpoint ``path``."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk or pick another hydra.run.dir"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable or pick another hydra.run.dir"
    else:
        fix = "check that folder (free space, write permission) or pick another hydra.run.dir"
    if saved:  # only the sidecar is missing: the new checkpoint loads with a warning
        return (
            f"Could not write the checksum file of {path.name} in {path.parent}: {reason} (the "
            f"checkpoint itself was saved); {fix}."
        )
    return (
        f"Could not save the checkpoint {path.name} in {path.parent}: {reason}; the checkpoints "
        f"already there are kept whole. To go on, {fix}."
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, syncs it, records its SHA-256 in
    ``<name>.checksum`` (``sha256sum``'s format: ``sha256sum -c`` checks it) and only then
    renames it into place: a run killed while saving leaves the previous checkpoint whole, never
    a half-written one under its name. A full disk or a read-only folder is one ``UserError``
    line, and the temporary files are removed.

    Loads verify the file (:func:`verify_checkpoint_file`) and read it as data only, whatever
    ``weights_only`` Lightning passes.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None
    ) -> None:
        path = Path(path)
        # Temporary names that Lightning's hpc_ckpt_<n> numbering cannot mistake for a checkpoint.
        tmp = path.with_name(f".vdm-{uuid.uuid4().hex}.tmp")
        sidecar_tmp = tmp.with_suffix(".tmp-checksum")
        saved = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            sidecar_tmp.write_text(f"{sha256_of(tmp)}  {path.name}\n")
            os.replace(tmp, path)
            saved = True
            os.replace(sidecar_tmp, path.with_name(path.name + SIDECAR_SUFFIX))
        except OSError as error:
            raise UserError(save_failure(path, error, saved)) from None
        finally:
            for leftover in (tmp, sidecar_tmp):
                with contextlib.suppress(OSError):  # the folder may refuse this too
                    leftover.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's load (resume, a requeued job's ``hpc_ckpt_*``), verified and as data only:
        ``weights_only`` is ignored, since vdm's checkpoints hold only tensors and plain data."""
        if not Path(path).is_file():  # missing, or a remote URL: Lightning's own handling
            kwargs = {} if map_location is None else {"map_location": map_location}
            return super().load_checkpoint(path, weights_only=True, **kwargs)
        verify_checkpoint_file(path, "checkpoint")
        return load_plain(path, "checkpoint", "cpu" if map_location is None else map_location)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + SIDECAR_SUFFIX).unlink(missing_ok=True)


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
    """Load a checkpoint written by ``python train.py`` as data only, after verifying the file
    (:func:`verify_checkpoint_file`); its weights must be finite.

    Raises:
        MissingFileError: ``path`` does not exist.
        UserError: the file is not a vdm checkpoint, is damaged, holds pickled code, or holds
            non-finite weights.
    """
    path = verify_checkpoint_file(path, key)
    checkpoint = load_plain(path, key, mmap=True)
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
