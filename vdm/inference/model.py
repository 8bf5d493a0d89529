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
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.models.text_embedding import TextEmbedding

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

    def encode_text(self, prompts: list[str]) -> TextEmbedding | None: ...

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


def takes_text(denoiser: nn.Module) -> bool:
    """Whether the denoiser was built with text (cross-attention to captions)."""
    return bool(getattr(denoiser, "text_dim", 0))


def join(a, b):
    """Two conditions of one kind (tensors, text embeddings or None) as one batch."""
    if a is None:
        return None
    if isinstance(a, TextEmbedding):
        return TextEmbedding.cat([a, b])
    return torch.cat([a, b])


def guided_by(
    denoiser: Callable[..., torch.Tensor], cond: dict, uncond: dict, scale: float
) -> Callable[..., torch.Tensor]:
    """Classifier-free guidance (Ho & Salimans 2022) over any conditions, as a ``model_fn``.

    Returns ``u + scale·(c - u)`` with ``c = denoiser(x, t, **cond)`` and ``u`` the output for
    ``uncond`` (the null label, the null prompt's or a negative prompt's embedding); both halves
    run as one batch. With labels and text both present, ``uncond`` drops both. Given frames
    (``context``) stay in both halves. ``scale = 1`` skips the unconditional half.

    Args:
        denoiser: ``denoiser(x, t, labels=..., context=..., text=...)``.
        cond: the conditional keyword arguments (``labels``, ``text``).
        uncond: the same keys, unconditional.
        scale: guidance scale ``w``; 1 = none.
    """

    def model_fn(
        x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        if scale == 1:
            return denoiser(x, t, context=context, **cond)
        both = {key: join(value, uncond[key]) for key, value in cond.items()}
        out = denoiser(torch.cat([x, x]), torch.cat([t, t]), context=join(context, context), **both)
        conditional, unconditional = out.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    return model_fn


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
    text: TextEmbedding | None = None,
    null_text: TextEmbedding | None = None,
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
        text: ``(N, ...)`` the prompts' embedding, for a denoiser built with text.
        null_text: the unconditional half's embedding under guidance (the null prompt's, or a
            negative prompt's), one row or ``N``.
    """
    num_classes = num_classes_of(denoiser)
    if context is not None and context[1].any() and not takes_given_frames(denoiser):
        raise UserError(
            "This checkpoint was trained without frame masks (context=none), so it cannot "
            "be given frames: train with context=mixed, or sample with task=generate."
        )
    with_text = takes_text(denoiser)
    if guidance_scale != 1 and num_classes == 0 and not with_text:
        raise UserError(
            f"guidance_scale={guidance_scale} needs a class- or text-conditional model; this one "
            "is unconditional (num_classes=0, no text encoder): use guidance_scale=1."
        )
    if with_text and (text is None or (guidance_scale != 1 and null_text is None)):
        raise UserError(
            "This model is text-conditional: pass text= (and null_text= under guidance), the "
            'embeddings of the prompts and of the null prompt "".'
        )
    if device is None:
        device = next(denoiser.parameters()).device
    was_training = denoiser.training
    denoiser.eval()
    try:
        cond, uncond = {}, {}
        if labels is not None:
            cond["labels"] = labels
            uncond["labels"] = torch.full_like(labels, num_classes)
        if with_text:
            n = shape[0]
            cond["text"] = text
            if null_text is not None:
                uncond["text"] = null_text if len(null_text) == n else null_text[[0] * n]
        # Guidance needs something to drop; without labels or text it is the model alone.
        scale = guidance_scale if uncond else 1.0
        model_fn = guided_by(denoiser, cond, uncond, scale)

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


def text_encoder_of(holder: object) -> nn.Module | None:
    """The text encoder ``holder`` was given, or None."""
    return getattr(holder, "text_encoder", None)


def attach_text_encoder(holder: nn.Module, encoder: nn.Module | None) -> None:
    """Give ``holder`` its text encoder: a trainable one as a sub-module (in the state dict and
    the optimizer, under ``text_encoder.*``), a frozen one as a plain attribute (never trained,
    never in the state dict; checkpoints name it by its fingerprint)."""
    if encoder is None:
        return
    if encoder.trainable:
        holder.text_encoder = encoder
    else:
        object.__setattr__(holder, "text_encoder", encoder)


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
    # No class-level ``text_encoder = None``: it would hide a trainable encoder registered as a
    # sub-module (nn.Module keeps those out of __dict__); read it through text_encoder_of.

    @property
    def num_classes(self) -> int:
        """The denoiser's class count (0: unconditional)."""
        return num_classes_of(self.denoiser)

    @property
    def frame_conditioning(self) -> bool:
        """Whether the denoiser takes given frames (trained with context masks)."""
        return takes_given_frames(self.denoiser)

    @property
    def takes_text(self) -> bool:
        """Whether the denoiser is prompted with text."""
        return takes_text(self.denoiser)

    def encode_text(self, prompts: list[str]) -> TextEmbedding | None:
        """The prompts' embedding on the denoiser's device (None for a model without text)."""
        encoder = text_encoder_of(self)
        if encoder is None:
            return None
        device = next(self.denoiser.parameters()).device
        if not encoder.trainable:  # frozen: a plain attribute, moved on first use
            encoder.to(device)
        return encoder.encode(list(prompts)).to(device)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        text: TextEmbedding | None = None,
    ) -> torch.Tensor:
        extra = {} if text is None else {"text": text}
        return self.denoiser(x, t, labels, context=context, **extra)

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
        text_encoder: the text encoder of a text-conditional denoiser: a sub-module when it
            was trained with the denoiser (its weights are in the checkpoint), a plain
            attribute when frozen (as the autoencoder).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        diffusion: Process,
        autoencoder: Autoencoder | None = None,
        text_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.diffusion = diffusion
        if autoencoder is not None:
            self.autoencoder = autoencoder
        attach_text_encoder(self, text_encoder)

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
