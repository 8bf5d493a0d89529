"""The two halves of model FLOPs utilisation (MFU): the FLOPs a training step needs, counted by
``torch.utils.flop_counter``, and the peak FLOP/s of the device it runs on.

Both the training logs (:class:`~vdm.training.throughput.ThroughputLog`) and the benchmarks
(``bench/denoisers.py``, ``bench/presets.py``) use these functions, so their figures are
computed the same way.

Counting follows the "model FLOPs" convention of PaLM (Chowdhery et al. 2022, appendix B): the
matmuls and convolutions the model needs, forward and backward, without recomputation. So
gradient checkpointing is off while counting, and attention's backward counts 2× its forward
(the four matmuls of dQ, dK, dV and dP), not torch's 2.5× (which adds the recomputed QKᵀ of a
fused kernel).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from vdm.inference.model import num_classes_of, takes_given_frames
from vdm.models.text_embedding import TextEmbedding

aten = torch.ops.aten

# On CPU, scaled_dot_product_attention runs these fused kernels, for which torch's counter has
# no formula: it counts 0 FLOPs for them (on the meta device SDPA decomposes into bmm instead).
CPU_ATTENTION = aten._scaled_dot_product_flash_attention_for_cpu
CPU_ATTENTION_BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward
ATTENTION_BACKWARD = (
    aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward,
    CPU_ATTENTION_BACKWARD,
)


def _register_cpu_attention() -> None:
    """Give the CPU kernels the formulas torch uses for the CUDA ones, so that any
    ``FlopCounterMode`` counts CPU attention (a torch that has them already keeps its own)."""

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kw):
        return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)

    for op, formula in ((CPU_ATTENTION, forward), (CPU_ATTENTION_BACKWARD, backward)):
        # "duplicate registrations": a newer torch counts this op itself; keep its formula.
        with contextlib.suppress(RuntimeError):
            register_flop_formula(op)(formula)


_register_cpu_attention()


def _attention_backward_model_flops(
    grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q: twice the forward's QKᵀ and PV."""
    return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)


# The model-FLOP convention for every fused attention backward, on every device.
MODEL_FLOPS = {op: _attention_backward_model_flops for op in ATTENTION_BACKWARD}


def count_flops(fn: Callable[[], object]) -> int:
    """Model FLOPs of the matmuls, convolutions and attention that ``fn()`` runs (the forward,
    and the backward if ``fn`` calls it), on any device, the meta device included.

    Args:
        fn: the work to count, e.g. ``lambda: model(x).square().mean().backward()``.
    """
    with FlopCounterMode(display=False, custom_mapping=MODEL_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def training_flops_per_clip(
    denoiser: nn.Module, clip_shape: tuple[int, ...], text: TextEmbedding | None = None
) -> int:
    """Model FLOPs of one training step (forward + backward) of ``denoiser`` on one clip.

    Runs the denoiser once on a zero clip of ``clip_shape = (C, T, H, W)`` (timestep 0, label 0,
    no given frames) and leaves everything as it found it: every RNG stream (CPU and the
    denoiser's CUDA device; dropout draws from them), the parameters' ``.grad`` (the same
    tensors, untouched) and ``gradient_checkpointing``, which is off while counting because
    recomputation is not model FLOPs. ``torch.compile`` is bypassed by calling ``forward``.
    Multiply by the clips in a step: vdm's denoisers attend within a clip only, so their FLOPs
    are linear in the batch.

    Args:
        denoiser: ``UNet3D``, ``SpaceTimeTransformer`` or any module with their ``forward``.
        clip_shape: ``(C, T, H, W)`` of a training clip.
        text: one caption's embedding, for a denoiser built with text (its cross-attention
            counts; the text encoder does not).
    """
    parameter = next(denoiser.parameters())
    device, dtype = parameter.device, parameter.dtype
    x = torch.zeros(1, *clip_shape, device=device, dtype=dtype)
    t = torch.zeros(1, dtype=torch.long, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if num_classes_of(denoiser) else None
    context = None
    if takes_given_frames(denoiser):
        context = torch.zeros(1, clip_shape[1], dtype=torch.bool, device=device)

    def step() -> None:
        extra = {} if text is None else {"text": text.to(device)}
        out = denoiser.forward(x, t, labels, context=context, **extra)
        out.float().square().mean().backward()

    parameters = list(denoiser.parameters())
    grads = [p.grad for p in parameters]
    checkpointing = getattr(denoiser, "gradient_checkpointing", None)
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        for p in parameters:
            p.grad = None
        if checkpointing is not None:
            denoiser.gradient_checkpointing = False
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            return count_flops(step)
    finally:
        for p, grad in zip(parameters, grads, strict=True):
            p.grad = grad
        if checkpointing is not None:
            denoiser.gradient_checkpointing = checkpointing


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in under a Lightning ``precision`` (``bf16-mixed`` → bfloat16,
    ``16-mixed`` → float16, ``64-true`` → float64, else float32).

    Args:
        precision: ``trainer.precision``, e.g. ``"bf16-mixed"`` or ``"32-true"``.
    """
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return torch.float32


# Dense tensor-core peaks (FLOP/s) of GPUs whose names Lightning's table does not parse
# (torch.cuda.get_device_name gives plain "NVIDIA H200"). The datasheets give the TF32, BF16
# and FP16 figures with 2:4 sparsity; these are half of those.
# H200 SXM and NVL: NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200).
# B200: NVIDIA HGX B200 specifications, "individual Blackwell GPU" column (nvidia.com/en-us/
# data-center/hgx): FP32 75 TFLOPS, TF32 2.2 and FP16/BF16 4.5 PFLOPS with sparsity.
GPU_PEAKS: dict[str, dict[torch.dtype | str, float]] = {
    "NVIDIA H200": {
        torch.float64: 34e12,
        torch.float32: 67e12,
        "tfloat32": 494.5e12,
        torch.bfloat16: 989.5e12,
        torch.float16: 989.5e12,
    },
    "NVIDIA H200 NVL": {
        torch.float64: 30e12,
        torch.float32: 60e12,
        "tfloat32": 417.5e12,
        torch.bfloat16: 835.5e12,
        torch.float16: 835.5e12,
    },
    "NVIDIA B200": {
        torch.float64: 37e12,
        torch.float32: 75e12,
        "tfloat32": 1.1e15,
        torch.bfloat16: 2.25e15,
        torch.float16: 2.25e15,
    },
}


def gpu_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Datasheet peak FLOP/s of a CUDA device for matmuls in ``dtype``, or None if unknown.

    float32 counts as TF32 when ``torch.get_float32_matmul_precision()`` allows it, as in
    Lightning. vdm's :data:`GPU_PEAKS` first, then Lightning's ``get_available_flops``.

    Args:
        device: a CUDA device.
        dtype: the compute dtype (:func:`compute_dtype`).
    """
    from lightning.fabric.utilities.throughput import get_available_flops

    peaks = GPU_PEAKS.get(torch.cuda.get_device_name(device))
    if peaks is None:
        return get_available_flops(device, dtype)
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        dtype = "tfloat32"  # every GPU of the table is Ampere or later
    return peaks.get(dtype)


def matmul_flops(
    dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0, rounds: int = 3
) -> float:
    """This CPU's practical peak: the best FLOP/s of an ``n × n`` matmul in ``dtype`` with
    torch's current thread count, over repeats for about ``seconds`` (at least ``rounds``).

    Args:
        dtype: the compute dtype (:func:`compute_dtype`).
        n: matrix size; 1024 reaches the BLAS peak and stays quick in bf16 on CPUs without bf16
            instructions.
        seconds: time to spend, after one warm-up. On a 2-core machine shared with other jobs
            the best of 1 s came within 5% of the best of 2 s, the best of 0.4 s up to 14%
            below it; lower it only on a machine of your own.
        rounds: the fewest timed matmuls, whatever ``seconds`` says.
    """
    generator = torch.Generator().manual_seed(0)  # not the global stream: training's RNG
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    a @ b
    best, start, done = math.inf, time.perf_counter(), 0
    while done < rounds or time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
        done += 1
    return 2 * n**3 / best


@functools.cache
def cpu_peak_flops(dtype: torch.dtype, threads: int) -> float:
    """:func:`matmul_flops`, measured once per process for each dtype and thread count (a
    process that trains several times, like a test session or a sweep, pays it once).

    Args:
        dtype: the compute dtype (:func:`compute_dtype`).
        threads: ``torch.get_num_threads()``, part of the cache key.
    """
    return matmul_flops(dtype)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device for matmuls in ``dtype``: the datasheet figure for a GPU, the
    measured matmul peak (:func:`cpu_peak_flops`) on CPU; None when unknown.

    Args:
        device: where training runs (``pl_module.device``).
        dtype: the compute dtype (:func:`compute_dtype`).
    """
    if device.type == "cpu":
        return cpu_peak_flops(dtype, torch.get_num_threads())
    if device.type == "cuda":
        return gpu_peak_flops(device, dtype)
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, dtype)  # TPUs; None for the rest
