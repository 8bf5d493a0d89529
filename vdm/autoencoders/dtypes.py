"""The dtype names autoencoder configs take."""

from __future__ import annotations

import torch

from vdm.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str, key: str) -> torch.dtype:
    """``torch.float32`` for ``"float32"``, ...; anything else is one line naming ``key``."""
    if name not in DTYPES:
        raise UserError(f"{key}={name}: use one of {', '.join(DTYPES)}.")
    return DTYPES[name]
