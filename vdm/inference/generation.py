"""Sampling a trained model in batches, with or without given frames: generation, prediction,
interpolation and long videos, seeded per clip. Shared by ``python -m vdm.sample``,
``python -m vdm.evaluate`` and the sample-video callback.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import numpy as np
import torch

from vdm.diffusion.context import task_mask
from vdm.diffusion.extend import extend_video
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.inference.model import Generative

AUTOCAST_DTYPES = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def clip_seed(*key: int) -> int:
    """A 63-bit seed from integers (independent streams for independent keys)."""
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & (2**63 - 1)


def class_labels(labels: list[int] | None, num_samples: int, num_classes: int) -> list[int] | None:
    """The label of each clip: ``labels`` cycled, or the classes in equal blocks (None for an
    unconditional model)."""
    if num_classes == 0:
        if labels:
            raise UserError(
                f"labels={list(labels)} needs a class-conditional model; this one is "
                "unconditional (num_classes=0): leave labels=null."
            )
        return None
    if not labels:
        return [i * num_classes // num_samples for i in range(num_samples)]
    labels = [int(c) for c in labels]
    if any(not 0 <= c < num_classes for c in labels):
        raise UserError(f"labels={labels}: this model knows classes 0..{num_classes - 1}.")
    return [labels[i % len(labels)] for i in range(num_samples)]


def clip_prompts(
    model: Generative, prompts: list[str] | None, num_samples: int
) -> list[str] | None:
    """The prompt of each clip: ``prompts`` cycled, ``""`` for every clip of a text model given
    none, None for a model without text (which refuses prompts)."""
    if not model.takes_text:
        if prompts:
            raise UserError(
                f"prompt={prompts[0]!r} needs a text-conditional model; this checkpoint was "
                "trained without a text encoder (text_encoder=none): leave prompt unset."
            )
        return None
    if not prompts:
        return [""] * num_samples
    return [str(prompts[i % len(prompts)]) for i in range(num_samples)]


def for_latents(sampler: SamplingLoop) -> SamplingLoop:
    """``sampler`` without its clamp of x0 estimates to ``[-1, 1]`` (``clip_denoised``): that is
    the range of pixels, while normalised latents have unit standard deviation, so the clamp
    would cut a third of their values (as diffusers' latent pipelines, ``clip_sample=False``)."""
    if not getattr(sampler, "clip_denoised", False):
        return sampler
    unclamped = copy.copy(sampler)
    unclamped.clip_denoised = False
    return unclamped


def sampler_name(sampler: SamplingLoop, num_steps: int) -> str:
    """``ddim50``, ``dpmsolver20``, ``ddpm1000``, ``floweuler20``: names output folders."""
    kind = type(sampler).__name__.removesuffix("Sampler").lower()
    return f"{kind}{sampler.steps or num_steps}"


def sample_videos(
    model: Generative,
    sampler: SamplingLoop,
    clip_shape: tuple[int, int, int, int],
    labels: list[int] | None,
    num_samples: int,
    batch_size: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
    precision: str = "32-true",
    progress: bool = False,
    context: tuple[torch.Tensor, torch.Tensor] | None = None,
    window_index: int = 0,
    interrupt: Callable[[], bool] | None = None,
    prompts: list[str] | None = None,
    negative_prompt: str = "",
) -> torch.Tensor:
    """``num_samples`` clips of ``clip_shape = (C, T, H, W)``: float ``(N, C, T, H, W)`` on the CPU.

    With an autoencoder the model samples latents of the clip (given frames are encoded, their
    mask taken to latent frames) and each batch is decoded before the next, so decode memory
    stays that of one batch.

    Clip ``i`` starts from noise seeded by ``(seed, i)`` alone (``(seed, i, window_index)`` for
    later windows of a long video), so deterministic samplers give the same clip for any
    ``num_samples`` and ``batch_size``; the noise stochastic samplers add along the way is
    seeded per batch.

    Args:
        context: ``(video (N, C, T, H, W), mask (N, T))``: the given frames of every clip,
            returned unchanged.
        interrupt: asked before every model call; True stops with
            :class:`~vdm.inference.model.SamplingInterrupted`.
        prompts: one prompt per clip, for a text-conditional model (None: the null prompt
            ``""``, i.e. unconditional samples).
        negative_prompt: what the unconditional half of guidance is given instead of ``""``.
    """
    prompts = clip_prompts(model, prompts, num_samples)
    # The unconditional half's embedding: one row, encoded once for every batch.
    null_text = model.encode_text([negative_prompt]) if prompts is not None else None
    if precision not in AUTOCAST_DTYPES:
        raise UserError(f"precision={precision}: use one of {', '.join(AUTOCAST_DTYPES)}.")
    if batch_size < 1 or num_samples < 1:
        raise UserError(f"num_samples={num_samples}, batch_size={batch_size}: both must be ≥ 1.")
    device = model.device
    dtype = AUTOCAST_DTYPES[precision]
    key = (window_index,) if window_index else ()
    autoencoder = model.autoencoder
    latent_shape = autoencoder.latent_shape(clip_shape)  # clip_shape itself in pixel space
    if autoencoder.fingerprint is not None:
        sampler = for_latents(sampler)
    clips = []
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        x_T = torch.stack(
            [
                model.diffusion.noise(
                    (1, *latent_shape), torch.Generator().manual_seed(clip_seed(seed, 0, i, *key))
                )[0]
                for i in range(start, stop)
            ]
        ).to(device)
        y = None if labels is None else torch.tensor(labels[start:stop], device=device)
        given = latent_given = None
        if context is not None:
            given = (context[0][start:stop].to(device), context[1][start:stop].to(device))
            latent_given = (autoencoder.encode(given[0]), autoencoder.latent_mask(given[1]))
        generator = torch.Generator(device=device).manual_seed(clip_seed(seed, 1, start, *key))
        text = {}
        if prompts is not None:
            text = {"text": model.encode_text(prompts[start:stop]), "null_text": null_text}
        autocast = torch.autocast(device.type, dtype) if dtype else contextlib.nullcontext()
        with autocast:
            latents = model.generate(
                sampler,
                tuple(x_T.shape),
                labels=y,
                guidance_scale=guidance_scale,
                generator=generator,
                progress=progress,
                x_T=x_T,
                context=latent_given,
                interrupt=interrupt,
                **text,
            )
        videos = autoencoder.decode(latents)
        if given is not None and autoencoder.fingerprint is not None:
            # Given frames come back as they were, not through the autoencoder's round trip.
            videos = torch.where(given[1][:, None, :, None, None], given[0].float(), videos.float())
        clips.append(videos.float().cpu())
    return torch.cat(clips)


def window_context(
    task: str, clip: torch.Tensor, window: int, given: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The given frames of one window for ``task`` (``predict`` or ``interpolate``).

    Args:
        clip: the real frames ``(C, T', H, W)`` from the start of a video.
        window: frames in the window.
        given: frames given (at each end for ``interpolate``).

    Returns:
        ``(video (C, window, H, W), mask (window,), truth)``: the window with the given frames in
        place (zeros elsewhere), the mask, and the real window when the clip covers it (else
        None).
    """
    mask = task_mask(task, window, given)
    needed = window if task == "interpolate" else given
    if clip.shape[1] < needed:
        raise UserError(
            f"The context video has {clip.shape[1]} frames (at the model's frame stride), fewer "
            f"than the {needed} task={task} needs with context.frames={given} and a {window}-"
            "frame window: use a longer video, or lower context.frames / frames."
        )
    truth = clip[:, :window] if clip.shape[1] >= window else None
    video = torch.zeros(clip.shape[0], window, *clip.shape[2:])
    available = min(window, clip.shape[1])
    video[:, :available] = clip[:, :available]
    return video * mask[None, :, None, None], mask, truth


def sample_long_videos(
    model: Generative,
    sampler: SamplingLoop,
    frame_shape: tuple[int, int, int],
    total_frames: int,
    window: int,
    overlap: int,
    first: torch.Tensor | None,
    labels: list[int] | None,
    num_samples: int,
    **options,
) -> torch.Tensor:
    """``num_samples`` videos of ``total_frames`` frames, ``window`` frames at a time, each later
    window given the last ``overlap`` frames (:func:`vdm.diffusion.extend.extend_video`).

    Args:
        frame_shape: ``(C, H, W)``.
        first: given opening frames ``(C, k, H, W)`` shared by every sample, one per sample
            ``(N, C, k, H, W)``, or None.
        **options: passed to :func:`sample_videos` (batch_size, guidance_scale, seed, ...).

    Returns:
        float ``(N, C, total_frames, H, W)`` on the CPU.
    """
    c, h, w = frame_shape

    def sample_window(video: torch.Tensor, mask: torch.Tensor, index: int) -> torch.Tensor:
        context = (video, mask) if bool(mask.any()) else None
        return sample_videos(
            model, sampler, (c, window, h, w), labels, num_samples, context=context,
            window_index=index, **options,
        )  # fmt: skip

    if first is not None and first.dim() == 4:
        first = first[None].expand(num_samples, *first.shape)
    return extend_video(sample_window, (num_samples, c, h, w), total_frames, window, overlap, first)


def side_by_side(*panels: np.ndarray | None, gap: int = 1) -> np.ndarray:
    """uint8 clips ``(N, T, H, W, 3)`` placed left to right with a ``gap``-pixel grey seam;
    None panels are left out."""
    present = [p for p in panels if p is not None]
    seam = np.full((*present[0].shape[:3], gap, 3), 128, dtype=np.uint8)
    parts = [present[0]]
    for panel in present[1:]:
        parts += [seam, panel]
    return np.concatenate(parts, axis=3)
