"""Scoring prediction and interpolation on real clips: PSNR and SSIM of the generated frames
against the real ones, the mean and the best of N samples per clip (MCVD's protocol, Voleti et
al. 2022), beside baselines computed on the same clips."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from vdm.diffusion.context import task_mask
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.evaluation.metrics import clip_psnr_ssim
from vdm.inference.generation import sample_videos
from vdm.inference.model import Generative


def baseline(task: str, clips: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What a model-free guess puts in the generated frames of ``clips (B, C, T, H, W)``.

    ``predict``: the last given frame, copied forward. ``interpolate``: a linear cross-fade from
    the last frame of the opening block to the first frame of the closing block.
    """
    given = mask.nonzero().flatten().tolist()
    out = clips.clone()
    if task == "predict":
        out[:, :, ~mask] = clips[:, :, given[-1] : given[-1] + 1]
        return out
    # interpolate: the gap runs between the two given blocks
    gap = (~mask).nonzero().flatten()
    before, after = int(gap[0]) - 1, int(gap[-1]) + 1
    for frame in gap.tolist():
        w = (frame - before) / (after - before)
        out[:, :, frame] = (1 - w) * clips[:, :, before] + w * clips[:, :, after]
    return out


def score(
    samples: torch.Tensor, clips: torch.Tensor, mask: torch.Tensor, per_clip: int
) -> dict[str, torch.Tensor]:
    """PSNR / SSIM over the generated frames of ``samples (B·N, C, T, H, W)`` against the
    ``clips (B, C, T, H, W)`` they continue, ``N = per_clip`` samples per clip.

    Returns ``{"psnr": (B, N), "ssim": (B, N)}``.
    """
    truth = clips.repeat_interleave(per_clip, dim=0)[:, :, ~mask]
    values = clip_psnr_ssim(samples[:, :, ~mask], truth)
    return {name: v.view(len(clips), per_clip) for name, v in values.items()}


def summarise(values: dict[str, list[torch.Tensor]]) -> dict[str, dict[str, float]]:
    """``{"psnr": {"mean", "best"}, ...}``: the mean over clips of the per-clip mean and the
    per-clip best (highest) of its samples."""
    out = {}
    for name, chunks in values.items():
        per_clip = torch.cat(chunks)  # (clips, N)
        out[name] = {
            "mean": float(per_clip.mean()),
            "best": float(per_clip.max(dim=1).values.mean()),
        }
    return out


def evaluate_context_task(
    model: Generative,
    sampler: SamplingLoop,
    task: str,
    batches: Iterable[dict],
    given: int,
    per_clip: int,
    batch_size: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
    precision: str = "32-true",
    on_samples=None,
    unconditional: bool = True,
) -> dict:
    """Score ``task`` (``predict`` or ``interpolate``) on real clips.

    Args:
        batches: real clips as batches ``{"video": (B, C, T, H, W), "label": (B,) optional,
            "caption": B str optional}``; a text-conditional model gets each clip's caption.
        given: frames given (at each end for interpolation).
        per_clip: samples per clip (N).
        on_samples: optional ``fn(clips, samples)`` called per batch (e.g. to feed FVD).
        unconditional: also sample the model without the given frames (half the time).

    Returns:
        ``{"model": {...}, "unconditional": {...}, "baseline": {...}, "clips": count}`` with
        ``{"psnr": {"mean", "best"}, "ssim": {"mean", "best"}}`` each: the model given the
        frames, the same model sampled without them (left out when ``unconditional`` is
        False), and the model-free baseline.
    """
    names = ["model", "unconditional", "baseline"] if unconditional else ["model", "baseline"]
    results = {name: {"psnr": [], "ssim": []} for name in names}
    count = 0
    for index, batch in enumerate(batches):
        clips = batch["video"].float()
        b, c, frames, h, w = clips.shape
        mask = task_mask(task, frames, given)
        labels = prompts = None
        if model.num_classes and "label" in batch:
            labels = batch["label"].repeat_interleave(per_clip).tolist()
        if model.takes_text:  # each clip's own caption ("" where the data has none)
            captions = batch.get("caption") or [""] * b
            prompts = [caption for caption in captions for _ in range(per_clip)]
        repeated = clips.repeat_interleave(per_clip, dim=0)
        context = (repeated * mask[None, None, :, None, None], mask.expand(len(repeated), -1))
        options = dict(
            guidance_scale=guidance_scale if labels or prompts else 1.0, precision=precision,
            seed=seed + index, prompts=prompts,
        )  # fmt: skip
        shape = (c, frames, h, w)
        samples = sample_videos(
            model, sampler, shape, labels, len(repeated), batch_size, context=context, **options
        )
        scored = [("model", samples)]
        if unconditional:
            plain = sample_videos(
                model, sampler, shape, labels, len(repeated), batch_size, **options
            )
            scored.append(("unconditional", plain))
        for name, videos in scored:
            for metric, v in score(videos, clips, mask, per_clip).items():
                results[name][metric].append(v)
        for metric, v in score(baseline(task, clips, mask), clips, mask, 1).items():
            results["baseline"][metric].append(v)
        if on_samples is not None:
            on_samples(clips, samples)
        count += b
    report = {name: summarise(values) for name, values in results.items()}
    return {**report, "clips": count, "samples_per_clip": per_clip}
