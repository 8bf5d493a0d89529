"""Building the latent cache of a training set (:mod:`vdm.data.latent_cache` reads it): each
clip is encoded once, by any number of ranks, and found again by its content key."""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from vdm.autoencoders import Autoencoder
from vdm.data.dataset import VideoClipDataset
from vdm.data.index import default_cache_dir
from vdm.data.latent_cache import (
    MANIFEST,
    LatentClipDataset,
    cache_key,
    read_manifest,
    shard_path,
    write_json_atomically,
)
from vdm.errors import UserError
from vdm.files.verify import sha256_of

log = logging.getLogger(__name__)


def key_parts(dataset: VideoClipDataset, autoencoder: Autoencoder, windows: int) -> dict:
    """Everything a cache's content depends on: the autoencoder (weights' SHA-256, class,
    geometry, normalisation), the data index (each file's path, size, frames, fps, frame size,
    label: the split files' choice included), clip length, stride, size, windows, and the
    clip-sampling rule (augmentation, short videos, seed)."""
    files = [
        {**asdict(r), "bytes": (dataset.root / r.path).stat().st_size} for r in dataset.records
    ]
    return {
        "autoencoder": autoencoder.fingerprint,
        "files": files,
        "clip_len": dataset.clip_len,
        "frame_stride": dataset.frame_stride,
        "size": dataset.size,
        "windows": windows,
        "sampling": {
            "augment": dataset.augment,
            "short_video": dataset.short_video,
            "seed": dataset.seed,
        },
    }


def shard_is_whole(path: Path) -> bool:
    """A shard written to the end: its file matches its SHA-256 sidecar."""
    recorded = recorded_digest(path)
    return recorded is not None and recorded == sha256_of(path)


def recorded_digest(path: Path) -> str | None:
    """The SHA-256 a shard's sidecar records (written after the shard's atomic rename, so a
    sidecar means a whole shard: no need to hash it again), or None."""
    try:
        return (
            path.with_name(path.name + ".checksum").read_text().split()[0]
            if path.is_file()
            else None
        )
    except (OSError, IndexError):
        return None


def encode_shard(
    dataset: VideoClipDataset, autoencoder: Autoencoder, items: range, windows: int,
    device: torch.device, batch_size: int,
) -> dict:  # fmt: skip
    """Posterior mean / std (float16), labels and fps of cache items ``items``."""
    means, stds, labels, fps = [], [], [], []
    for start in range(items.start, items.stop, batch_size):
        keys = range(start, min(start + batch_size, items.stop))
        # Window w of video v is the clip the dataset draws for (v, epoch=w): fixed by the seed.
        clips = [dataset[(k // windows, k % windows)] for k in keys]
        video = torch.stack([c["video"] for c in clips]).to(device)
        mean, std = autoencoder.posterior(video)
        means.append(mean.half().cpu())
        stds.append(std.half().cpu())
        labels += [int(c.get("label", -1)) for c in clips]
        fps += [float(c["fps"]) for c in clips]
    return {
        "mean": torch.cat(means), "std": torch.cat(stds),
        "label": torch.tensor(labels, dtype=torch.long), "fps": torch.tensor(fps),
    }  # fmt: skip


def save_shard(path: Path, shard: dict) -> None:
    """Write ``path`` and its sidecar atomically (a killed build leaves no half shard)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(shard, temporary)
    digest = sha256_of(temporary)
    os.replace(temporary, path)
    sidecar = path.with_name(path.name + ".checksum")
    temporary_sidecar = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex}.tmp")
    temporary_sidecar.write_text(f"{digest}  {path.name}\n")
    os.replace(temporary_sidecar, sidecar)


def build_latent_cache(
    dataset: VideoClipDataset,
    autoencoder: Autoencoder,
    windows: int = 1,
    shard_size: int = 256,
    batch_size: int = 16,
    root: Path | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Encode ``windows`` clips of every video of ``dataset`` into ``<root>/latents/<key>/``,
    or find them there. Rank ``r`` of ``world_size`` encodes shards ``r, r + world, ...``,
    skipping whole ones (a killed build resumes); after ``barrier()`` rank 0 writes the
    manifest. Returns the folder.

    Args:
        root: vdm's cache root (``$VDM_CACHE_DIR``, where the shapes set and the video index
            are cached too); None = that.
        batch_size: clips per encode call.
    """
    if windows < 1 or shard_size < 1 or batch_size < 1:
        raise UserError(
            f"latents.windows={windows}, latents.shard_size={shard_size}, latents.batch_size="
            f"{batch_size}: each must be >= 1."
        )
    parts = key_parts(dataset, autoencoder, windows)
    folder = (root or default_cache_dir()) / "latents" / cache_key(parts)
    if read_manifest(folder) is not None:
        log.info("Latent cache found: %s", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    clips = len(dataset) * windows
    shards = math.ceil(clips / shard_size)
    started, encoded = time.perf_counter(), 0
    for index in range(rank, shards, world_size):
        path = shard_path(folder, index)
        if shard_is_whole(path):  # written by a build that was killed later
            continue
        items = range(index * shard_size, min((index + 1) * shard_size, clips))
        save_shard(
            path,
            encode_shard(dataset, autoencoder, items, windows, torch.device(device), batch_size),
        )
        encoded += len(items)
        log.info("Latent cache: shard %d/%d written (%d clips)", index + 1, shards, len(items))
    seconds = time.perf_counter() - started
    if encoded:
        log.info("Encoded %d clips in %.1f s (%.1f clips/s) into %s", encoded, seconds,
                 encoded / max(seconds, 1e-9), folder)  # fmt: skip
    barrier()
    if rank == 0:
        digests = []
        for index in range(shards):
            path = shard_path(folder, index)
            digest = recorded_digest(path)
            if digest is None:
                raise UserError(
                    f"latent cache shard {path} was not written whole: train again to rebuild it."
                )
            digests.append(digest)
        write_json_atomically(folder / MANIFEST, {
            "clips": clips, "shard_size": shard_size, "shards": digests, "windows": windows,
            "labelled": bool(getattr(dataset, "labelled", False)), "key": parts,
        })  # fmt: skip
        size = sum(shard_path(folder, i).stat().st_size for i in range(shards))
        log.info(
            "Latent cache ready: %d clips, %.1f KB per clip, %s", clips, size / clips / 1e3, folder
        )
    barrier()
    return folder


def window_captions(dataset: VideoClipDataset, windows: int) -> list[str] | None:
    """The caption of each cached clip: item ``k`` is window ``k % windows`` of video
    ``k // windows``, the sample ``(k // windows, k % windows)`` of ``dataset``, so its caption
    is that video's, mirrored where that window was flipped. None when ``dataset`` has no
    captions."""
    if getattr(dataset, "captions", None) is None:
        return None
    return [dataset.caption(k // windows, k % windows) for k in range(len(dataset) * windows)]


def cached_training_set(
    dataset: VideoClipDataset, trainer=None, *, autoencoder: Autoencoder, options: dict
) -> LatentClipDataset:
    """The training set as its latent cache, built (by every rank of ``trainer``) if needed,
    with the captions of ``dataset`` (read now, never cached)."""
    strategy = trainer.strategy if trainer is not None else None
    folder = build_latent_cache(
        dataset, autoencoder, **options,
        device=strategy.root_device if strategy is not None else "cpu",
        rank=trainer.global_rank if trainer is not None else 0,
        world_size=trainer.world_size if trainer is not None else 1,
        barrier=strategy.barrier if strategy is not None else (lambda: None),
    )  # fmt: skip
    windows = read_manifest(folder)["windows"]
    return LatentClipDataset(folder, window_captions(dataset, windows))
