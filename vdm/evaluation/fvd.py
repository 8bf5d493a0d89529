"""FVD of a trained run's samples against real clips, the two sides fed to the metric alike; for
a text-conditional run also, or only, their CLIP-score against their prompts."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UserError
from vdm.evaluation.clip_score import ClipScore
from vdm.evaluation.metrics import FrechetVideoDistance
from vdm.files.video import to_uint8
from vdm.inference.generation import class_labels
from vdm.inference.run import LoadedRun

log = logging.getLogger(__name__)


def fvd_of_samples(
    loaded: LoadedRun,
    sampler: SamplingLoop,
    fvd: FrechetVideoDistance | None,
    real_batches: Iterable[dict],
    num_samples: int,
    frames: int,
    batch_size: int,
    guidance_scale: float,
    seed: int = 0,
    precision: str = "32-true",
    clip: ClipScore | None = None,
) -> tuple[dict, dict]:
    """FVD of ``num_samples`` generated clips of ``frames`` frames (the classes in equal blocks
    for a conditional model; prompted with the real clips' captions, cycled, for a
    text-conditional one) against the clips of ``real_batches``.

    Generated clips pass through uint8, as the real ones come from 8-bit video: both sides are
    quantised alike.

    Args:
        fvd: the metric, or None for CLIP-score alone.
        clip: also score the samples against their prompts, and the real clips against their
            own captions as the reference (a text-conditional model).

    Returns:
        ``({"fvd": value or None, "clip_score": s, "clip_score_real": r}, {"num_generated": n,
        "num_real": m})``, ``fvd`` present when ``fvd`` is given, the others when ``clip`` is.
    """
    num_real, captions, real_scores = 0, [], []
    for batch in real_batches:
        if fvd is not None:
            fvd.update(batch["video"].to(fvd.device), real=True)
        num_real += len(batch["video"])
        captions += list(batch.get("caption", []))
        if clip is not None and "caption" in batch:  # scored as they pass: none is kept
            real_scores.append(clip.score(to_uint8(batch["video"]), batch["caption"]).per_clip)
    log.info("Read %d real clips", num_real)
    labels = class_labels(None, num_samples, loaded.model.num_classes)
    prompts = None
    if loaded.model.takes_text:
        if not captions:
            raise UserError(
                "This checkpoint is text-conditional, but the real clips carry no captions to "
                "prompt it with: evaluate on captioned data (data.captions=FILE)."
            )
        prompts = [captions[i % len(captions)] for i in range(num_samples)]
    videos = loaded.sample(
        sampler, num_samples, batch_size, frames=frames, labels=labels,
        guidance_scale=guidance_scale, seed=seed, precision=precision, prompts=prompts,
    )  # fmt: skip
    generated = to_uint8(videos)
    metrics = {}
    if fvd is not None:
        for i in range(0, len(generated), batch_size):
            chunk = torch.from_numpy(generated[i : i + batch_size]).to(fvd.device)
            fvd.update(chunk.permute(0, 4, 1, 2, 3).float() / 127.5 - 1, real=False)
        value = float(fvd.compute())
        metrics["fvd"] = value if math.isfinite(value) else None
    if clip is not None:
        metrics["clip_score"] = clip.score(generated, prompts).mean
        metrics["clip_score_real"] = float(torch.cat(real_scores).mean())
    return metrics, {"num_generated": len(generated), "num_real": num_real}
