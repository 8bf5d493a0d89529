"""The video index: every video under a folder, probed once and cached, with what failed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from vdm.data.reader import VideoReadError, probe
from vdm.errors import MissingFileError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
INDEX_VERSION = 1  # bump when the cached index format changes


def default_cache_dir() -> Path:
    """``$VDM_CACHE_DIR``, else ``$XDG_CACHE_HOME/vdm``, else ``~/.cache/vdm``."""
    if "VDM_CACHE_DIR" in os.environ:
        return Path(os.environ["VDM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vdm"


def find_videos(root: Path) -> list[Path]:
    """Video files under ``root`` (recursive, hidden entries skipped), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath, f)
            for f in filenames
            if f.lower().endswith(VIDEO_EXTENSIONS) and not f.startswith(".")
        ]
    return sorted(found)


def hash_split(rel_path: str, val_fraction: float) -> str:
    """``train`` or ``val`` from a stable hash of the relative path: the same file always lands
    in the same split, whatever else is in the folder."""
    digest = int(hashlib.sha1(rel_path.encode()).hexdigest()[:8], 16)
    return "val" if digest / 0xFFFFFFFF < val_fraction else "train"


class VideoIndex:
    """Every video under a root, probed once, with the files that could not be read.

    The index is cached as JSON under ``cache_dir``, keyed by the root and the relative path,
    size and mtime of every video, so any change to the folder rebuilds it.
    """

    def __init__(self, root: Path, cache_dir: Path | None = None, num_workers: int = 4) -> None:
        self.root = root
        files = find_videos(root)
        if not files:
            raise MissingFileError(
                f"No video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}: point data.root "
                "at a folder of videos."
            )
        self.rel_paths = [f.relative_to(root).as_posix() for f in files]
        listing = [
            (r, f.stat().st_size, f.stat().st_mtime_ns)
            for r, f in zip(self.rel_paths, files, strict=True)
        ]
        key = hashlib.sha256(
            json.dumps([INDEX_VERSION, str(root.resolve()), listing]).encode()
        ).hexdigest()[:20]
        self.cache_file = (cache_dir or default_cache_dir()) / "index" / f"{key}.json"
        if self.cache_file.is_file():
            cached = json.loads(self.cache_file.read_text())
            self.info, self.problems = cached["info"], cached["problems"]
        else:
            self.info, self.problems = self._build(num_workers)
            self._save()

    def _build(self, num_workers: int) -> tuple[dict[str, dict], dict[str, str]]:
        log.info("Indexing %d videos under %s", len(self.rel_paths), self.root)

        def probe_one(rel: str) -> tuple[str, dict | str]:
            try:
                return rel, asdict(probe(self.root / rel))
            except VideoReadError as error:
                return rel, error.reason

        info, problems = {}, {}
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            for rel, result in pool.map(probe_one, self.rel_paths):
                if isinstance(result, str):
                    problems[rel] = result
                else:
                    info[rel] = result
        return info, problems

    def _save(self) -> None:
        """Write the cache atomically; a read-only cache location only costs a re-index."""
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"info": self.info, "problems": self.problems}))
            os.replace(tmp, self.cache_file)
        except OSError as error:
            log.warning("Could not cache the video index at %s: %s", self.cache_file, error)
