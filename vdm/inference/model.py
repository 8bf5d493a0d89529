"""A trained denoiser together with the process it reverses, and sampling from it: everything
generation needs, without Lightning. :class:`~vdm.training.module.VideoDiffusionModule` has the
same ``denoiser`` / ``diffusion`` pair and samples through the same :func:`generate`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from vdm.autoencoders import Autoencoder, PixelSpace
from vdm.diffusion.flow import FlowMatching
from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import guided
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError

log = logging.getLogger(__name__)

Process = GaussianDiffusion | FlowMatching


class SamplingInterrupted(Exception):
    """Sampling stopped between two model calls because ``interrupt()`` said so (a signal asked
    a training run to stop while it drew sample videos)."""


class Generative(Protocol):
    """What batched sampling needs of a model: a :class:`DiffusionModel`, or the Lightning
    module during training."""

    denoiser: nn.Module
    diffusion: Process
    autoencoder: Autoencoder

    @property
    def device(self) -> torch.device: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def frame_conditioning(self) -> bool: ...

    def generate(
        self, sampler: SamplingLoop, shape: tuple[int, ...], **options
    ) -> torch.Tensor: ...


def num_classes_of(denoiser: nn.Module) -> int:
    """The denoiser's class count (0: unconditional; index ``num_classes`` is the null label)."""
    return getattr(denoiser, "num_classes", 0)


def takes_given_frames(denoiser: nn.Module) -> bool:
    """Whether the denoiser was built with frame conditioning (trained with context masks)."""
    return getattr(denoiser, "frame_conditioning", False)


@torch.no_grad()
def generate(
    denoiser: nn.Module,
    diffusion: Process,
    sampler: SamplingLoop,
    shape: tuple[int, ...],
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x_T: torch.Tensor | None = None,
    context: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Sample videos ``shape = (N, C, T, H, W)`` in [-1, 1] from ``denoiser`` (in eval mode for
    the call, its mode restored after).

    Args:
        sampler: a sampler of ``diffusion``'s family (DDPM, DDIM, DPM-Solver++; Euler, Heun).
        shape: output shape; the frame count may differ from training.
        labels: ``(N,)`` class labels for a conditional model (None = the null label).
        guidance_scale: classifier-free guidance scale; 1 = none.
        generator: RNG of the initial noise (on ``device``).
        progress: show a progress bar over steps.
        x_T: the initial noise ``shape``; drawn from ``generator`` when None.
        context: ``(video, mask)``: given frames (``video`` of ``shape``, bool ``mask``
            ``(N, T)``), returned unchanged; needs a frame-conditioned denoiser.
        device: where to sample; None = the denoiser's device.
        interrupt: asked before every model call; True stops sampling with
            :class:`SamplingInterrupted` (a signal then ends a run within one sampler step).
    """
    num_classes = num_classes_of(denoiser)
    if context is not None and context[1].any() and not takes_given_frames(denoiser):
        raise UserError(
            "This checkpoint was trained without frame masks (context=none), so it cannot "
            "be given frames: train with context=mixed, or sample with task=generate."
        )
    if guidance_scale != 1 and num_classes == 0:
        raise UserError(
            f"guidance_scale={guidance_scale} needs a class-conditional model; this one is "
            "unconditional (num_classes=0): use guidance_scale=1."
        )
    if device is None:
        device = next(denoiser.parameters()).device
    was_training = denoiser.training
    denoiser.eval()
    try:
        if labels is not None and guidance_scale != 1:
            model_fn = guided(denoiser, labels, guidance_scale, num_classes)
        else:

            def model_fn(
                x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None
            ) -> torch.Tensor:
                return denoiser(x, t, labels, context=context)

        if interrupt is not None:
            model_fn = interruptible(model_fn, interrupt)
        return sampler.sample(
            diffusion, model_fn, shape, generator=generator, x_T=x_T, progress=progress,
            device=device, context=context,
        )  # fmt: skip
    finally:
        denoiser.train(was_training)


def interruptible(model_fn: Callable[..., torch.Tensor], interrupt: Callable[[], bool]):
    """``model_fn`` that first asks ``interrupt()`` and raises :class:`SamplingInterrupted` when
    it says True."""

    def checked(*args, **kwargs) -> torch.Tensor:
        if interrupt():
            raise SamplingInterrupted("sampling interrupted")
        return model_fn(*args, **kwargs)

    return checked


class DenoiserHolder:
    """What a module holding ``denoiser``, ``diffusion`` and ``autoencoder`` offers, shared by
    :class:`DiffusionModel` and the Lightning module: its class count, whether it takes given
    frames, the denoiser's forward and :func:`generate` (in latent space: callers go through
    :func:`~vdm.inference.generation.sample_videos`, which encodes and decodes). Put it before
    ``nn.Module`` in the bases.

    The autoencoder is a plain attribute, not a sub-module: it is frozen, never in the
    optimizer and never in the state dict (a checkpoint names it by its fingerprint instead).
    """

    denoiser: nn.Module
    diffusion: Process
    autoencoder: Autoencoder = PixelSpace()

    @property
    def num_classes(self) -> int:
        """The denoiser's class count (0: unconditional)."""
        return num_classes_of(self.denoiser)

    @property
    def frame_conditioning(self) -> bool:
        """Whether the denoiser takes given frames (trained with context masks)."""
        return takes_given_frames(self.denoiser)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.denoiser(x, t, labels, context=context)

    def generate(self, sampler: SamplingLoop, shape: tuple[int, ...], **options) -> torch.Tensor:
        """Sample the denoiser's space, ``shape = (N, C, T, H, W)`` (latents with an
        autoencoder, videos in [-1, 1] without), with the current weights (:func:`generate`:
        labels, guidance, generator, context, ...)."""
        return generate(self.denoiser, self.diffusion, sampler, shape, **options)


class DiffusionModel(DenoiserHolder, nn.Module):
    """A denoiser and the diffusion process (or flow) it was trained to reverse.

    Its state dict has the Lightning module's keys (``denoiser.*``), so a training checkpoint's
    ``state_dict`` loads into it as it is. :func:`vdm.inference.load_run` builds one from a
    checkpoint.

    Example:
        >>> model = DiffusionModel(UNet3D(num_classes=3), GaussianDiffusion(NoiseSchedule()))
        >>> videos = model.generate(DDIMSampler(50), (4, 3, 8, 32, 32), labels=torch.arange(4) % 3)

    Args:
        denoiser: ``UNet3D``, ``SpaceTimeTransformer`` or any module with their ``forward``.
        diffusion: the process it was trained with (``GaussianDiffusion`` or ``FlowMatching``).
        autoencoder: the frozen autoencoder whose latents it was trained on (None: pixels).
    """

    def __init__(
        self, denoiser: nn.Module, diffusion: Process, autoencoder: Autoencoder | None = None
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.diffusion = diffusion
        if autoencoder is not None:
            self.autoencoder = autoencoder

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device


def compile_denoiser(model: Generative) -> None:
    """``torch.compile`` ``model.denoiser`` in place (``nn.Module.compile``): training,
    validation and sampling run the compiled code, while parameter names, and so checkpoints,
    stay those of the plain model (no ``_orig_mod.`` prefix): compiled and plain runs load each
    other's."""
    log.info("Compiling the denoiser with torch.compile (the first steps are slow)")
    model.denoiser.compile()
