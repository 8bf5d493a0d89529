"""Caption adherence of a text-conditional run on the shapes set: its samples, prompted with the
captions of real clips, scored for the colours, shapes, sizes, directions and counts the
captions state (:mod:`vdm.evaluation.adherence`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from vdm.data.shape_captions import parse_caption
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.evaluation.adherence import score_clips
from vdm.evaluation.clip_score import ClipScore
from vdm.files.video import to_uint8
from vdm.inference.run import LoadedRun

log = logging.getLogger(__name__)


def adherence_of_samples(
    loaded: LoadedRun,
    sampler: SamplingLoop,
    real_batches: Iterable[dict],
    batch_size: int,
    guidance_scale: float,
    seed: int = 0,
    precision: str = "32-true",
    clip: ClipScore | None = None,
) -> tuple[dict, dict]:
    """Sample one clip per real clip, prompted with its caption, and score all three sides.

    Args:
        clip: also the CLIP-score of the samples against their prompts (``clip_score``) and of
            the real clips against their captions (``clip_score_real``).

    Returns:
        ``(metrics, counts)``: ``metrics`` has ``model`` (the samples against their prompts),
        ``real`` (the real clips against their own captions: the ceiling, about 0.97 on
        ``all``) and ``shuffled`` (the samples against the next clip's prompt: what ignoring
        the prompt scores), each the columns of :func:`~vdm.evaluation.adherence.adherence`,
        and the CLIP-scores when ``clip`` is given; ``counts`` the number of clips.
    """
    if not loaded.model.takes_text:
        raise UserError(
            "task=adherence needs a text-conditional checkpoint (trained with text_encoder=tiny, "
            "t5 or clip): this one takes no prompt."
        )
    real, captions = [], []
    for batch in real_batches:
        if "caption" not in batch:
            raise UserError("task=adherence needs captioned clips: the shapes set has them.")
        real.append(to_uint8(batch["video"]))
        captions += list(batch["caption"])
    real_clips = np.concatenate(real)
    facts = [parse_caption(caption) for caption in captions]
    log.info("Sampling %d clips prompted with the real clips' captions", len(captions))
    videos = to_uint8(
        loaded.sample(
            sampler, len(captions), batch_size, frames=real_clips.shape[1], prompts=captions,
            guidance_scale=guidance_scale, seed=seed, precision=precision,
        )
    )  # fmt: skip
    shifted = facts[1:] + facts[:1]  # every clip against another clip's caption
    metrics = {
        "model": score_clips(list(videos), facts),
        "real": score_clips(list(real_clips), facts),
        "shuffled": score_clips(list(videos), shifted),
    }
    if clip is not None:
        metrics["clip_score"] = clip.score(videos, captions).mean
        metrics["clip_score_real"] = clip.score(real_clips, captions).mean
    return metrics, {"num_clips": len(captions)}
