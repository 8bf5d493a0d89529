"""What every benchmark prints about the machine: a header line and the matmul peak."""

from __future__ import annotations

import platform
import time

import torch

from vdm.training.flops import matmul_flops


def header() -> str:
    return (
        f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )


def matmul_gflops(dtype: torch.dtype) -> float:
    """This machine's practical matmul peak in GFLOP/s, measured as the training logs measure
    the CPU peak of ``train/mfu`` (:func:`vdm.training.flops.matmul_flops`)."""
    return matmul_flops(dtype) / 1e9
