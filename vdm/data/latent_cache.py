"""A latent cache on disk and the training set that reads it.

Layout, under ``<cache root>/latents/<key>/``::

    shard-00000.pt  shard-00000.pt.checksum  ...  manifest.json

Each shard holds ``shard_size`` clips: the posterior ``mean`` and ``std`` (float16,
``(n, C, T', H', W')``), ``label`` and ``fps``, saved with ``torch.save`` (a zip: read as data
only and memory-mapped, so a process holds only what it reads). Shards are written atomically
with a SHA-256 sidecar; ``manifest.json`` is written last and lists every shard's digest, so a
folder without it is a build that did not finish (it resumes), and a shard that disagrees with
it is refused in one line. The key hashes everything the content depends on
(:func:`cache_key`), so a changed part gives a new folder and an unchanged one is reused.

Item ``k`` of the cache is window ``k % windows`` of video ``k // windows``: each video
contributes ``windows`` clips drawn once (random start, crop and flip from a fixed seed); every
epoch sees all of them, in a new order.

Captions are not cached: the latents do not depend on them, and they may change on their own.
The training set attaches them from the video data set when it opens the cache (the caption of
item ``k`` is that of its video, mirrored when its window was flipped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vdm.errors import DataError
from vdm.files.verify import load_plain, sha256_of

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # part of every key: bump when the shard contents change
MANIFEST = "manifest.json"


def cache_key(parts: dict[str, Any]) -> str:
    """The folder name of a cache: a SHA-256 (first 20 hex digits) of its key parts."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.pt"


def write_json_atomically(path: Path, data: dict) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(temporary, path)


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a finished cache, or None (not built, or a build that did not finish)."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class LatentClipDataset(Dataset):
    """The cached training clips of ``folder``: ``{"latents_mean", "latents_std", "label",
    "fps"}`` per item (float32 latents), and ``"caption"`` when ``captions`` are given. Keys
    may be ``(index, epoch)`` pairs from :class:`~vdm.data.sampler.EpochSampler`; the epoch is
    not needed (the windows are fixed).

    Args:
        folder: a finished cache (:func:`vdm.training.latent_cache.build_latent_cache`).
        captions: the caption of each cached clip, in item order, or None (no captions).

    Raises:
        DataError: the folder holds no finished cache, a shard is missing or damaged, or the
            captions do not match the cached clips one to one.
    """

    def __init__(self, folder: str | Path, captions: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise DataError(
                f"{self.folder} holds no finished latent cache (no {MANIFEST}): build it again "
                "(python -m vdm.cache ... or a training run with latents.cache=true)."
            )
        self.length, self.shard_size = manifest["clips"], manifest["shard_size"]
        self.digests: list[str] = manifest["shards"]
        self.labelled = manifest.get("labelled", True)
        for index in range(len(self.digests)):
            if not shard_path(self.folder, index).is_file():
                raise self._damaged(index, "is missing")
        if captions is not None and len(captions) != self.length:
            raise DataError(
                f"{len(captions)} captions for the {self.length} clips cached in {self.folder}: "
                "open the cache with the data set it was built from."
            )
        self.captions = captions
        self._shards: dict[int, dict] = {}

    def _damaged(self, index: int, what: str) -> DataError:
        return DataError(
            f"latent cache shard {shard_path(self.folder, index)} {what}: delete the folder "
            f"{self.folder} and train again (or run python -m vdm.cache) to rebuild it."
        )

    def shard(self, index: int) -> dict:
        """Shard ``index``, checked against the manifest's SHA-256 on its first use here."""
        if index not in self._shards:
            path = shard_path(self.folder, index)
            if sha256_of(path) != self.digests[index]:
                raise self._damaged(index, "does not match the SHA-256 in the manifest")
            self._shards[index] = load_plain(path, "latent cache shard", mmap=True)
        return self._shards[index]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        shard = self.shard(index // self.shard_size)
        row = index % self.shard_size
        item = {
            "latents_mean": shard["mean"][row].float(),
            "latents_std": shard["std"][row].float(),
            "fps": shard["fps"][row].clone(),
        }
        if self.labelled:
            item["label"] = shard["label"][row].clone()
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item
