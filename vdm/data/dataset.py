"""VideoClipDataset: clips from a folder of video files, labels from its sub-folders, captions
from a metadata file or from ``.txt`` files beside the videos."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from torch.utils.data import Dataset

from vdm.data.captions import (
    check_missing_caption,
    first_names,
    mirror_caption,
    video_captions,
    warn_once,
)
from vdm.data.clips import clip_indices, clip_span
from vdm.data.index import VideoIndex, default_cache_dir, hash_split
from vdm.data.reader import VideoReader, VideoReadError, probe
from vdm.errors import DataError, MissingFileError, UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclass(frozen=True)
class VideoRecord:
    """One indexed video: path relative to the root, decodable frames, fps, size, label."""

    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    label: int


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(height, width)`` scaled so the short side is ``size``, the aspect ratio kept."""
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def read_video_start(
    path: str | Path, size: int, frame_stride: int = 1, max_frames: int | None = None
) -> np.ndarray:
    """The first frames of one video, decoded as validation clips are: every
    ``frame_stride``-th frame from the first, short side resized to ``size``, centre-cropped
    square. Returns uint8 ``(T, size, size, 3)`` with ``T ≤ max_frames`` (all when None).

    Raises:
        VideoReadError: the file cannot be read.
    """
    info = probe(path)
    indices = list(range(0, info.num_frames, frame_stride))[:max_frames]
    height, width = short_side_size(info.height, info.width, size)
    if (height, width) == (info.height, info.width):
        height = width = -1  # native size: skip decord's scaler
    frames = VideoReader(path, width=width, height=height).get_batch(indices)
    top, left = (frames.shape[1] - size) // 2, (frames.shape[2] - size) // 2
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def read_split_file(path: str | Path) -> set[str]:
    """The relative paths a split file lists (UCF-101's ``trainlist01.txt`` format: a path per
    line, optionally followed by a class index; blank lines are skipped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"Split file {path} does not exist: set data.split_files.train / .val to lists "
            "such as UCF-101's trainlist01.txt and testlist01.txt."
        )
    listed = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
            raise UserError(
                f"{path}:{number}: expected 'relative/path.avi' or 'relative/path.avi 3', got "
                f"{line.strip()!r}."
            )
        listed.add(fields[0].replace("\\", "/").lstrip("/"))
    if not listed:
        raise UserError(f"Split file {path} lists no files.")
    return listed


class VideoClipDataset(Dataset):
    """Clips of ``clip_len`` frames from every readable video under ``root``.

    Labels come from the first-level sub-folder names (sorted: the first is 0); a flat folder
    is unlabelled and its samples carry no ``"label"``. A root holding ``train/`` and ``val/``
    folders is taken as already split; a ``split_file`` (UCF-101's official lists) picks the
    files instead; otherwise a file's split comes from a stable hash of its path. Unreadable and
    too-short files are left out and reported in one warning. A file that fails later, at read
    time, is logged once and replaced by another sample.

    Each sample is ``{"video": float (C, T, H, W) in [-1, 1], "label": long, "fps": float}``,
    where ``fps`` is the clip's frame rate (the video's divided by ``frame_stride``), plus
    ``"caption": str`` when the data has captions (batches then hold ``caption: list[str]``).
    Captions come from a metadata file (``captions``), else from a ``.txt`` beside each video
    (same stem); a folder with neither has no captions, and its samples carry no
    ``"caption"``. They are read here, not kept in the cached index, so they can change on
    their own. A horizontally flipped clip is a mirror image: its caption swaps the words
    ``left`` and ``right``.

    Example:
        >>> ds = VideoClipDataset("UCF-101/", clip_len=16, frame_stride=2, size=64, split="train")
        >>> ds[0]["video"].shape
        torch.Size([3, 16, 64, 64])

    Args:
        root: folder of videos (.mp4 .avi .mkv .webm .mov, searched recursively).
        clip_len: frames per clip.
        frame_stride: take every ``frame_stride``-th frame (2 halves the frame rate).
        size: output height and width; frames are resized (short side to ``size``, while
            decoding) and cropped square.
        split: ``train``, ``val``, or None for every file.
        val_fraction: share of files in ``val`` when the split comes from the hash.
        split_file: a list of the files in ``split`` (UCF-101's ``trainlist01.txt`` /
            ``testlist01.txt`` format: one path relative to ``root`` per line, optionally
            followed by a class index, which is not used: labels come from the class folders).
            It replaces the hash split; files it lists that are not under ``root`` are
            reported in the warning.
        augment: random clip start, random crop and horizontal flip; default: on for ``train``
            only (validation then sees the same centred clip every time).
        short_video: ``skip``, ``loop`` or ``repeat_last`` for videos shorter than a clip.
        cache_dir: where the index is cached (default :func:`default_cache_dir`).
        index_workers: threads that probe files while building the index.
        max_retries: replacement samples tried after a read failure before giving up.
        seed: seed of the per-sample augmentation when keys carry their epoch.
        captions: a metadata file of captions: a ``.csv`` with a header and ``path,caption``
            columns (Open-Sora's files, with ``text`` for the caption, too) or ``.jsonl`` /
            ``.json`` lines ``{"path": ..., "caption": ...}``; paths relative to ``root`` or
            absolute under it. None reads a ``.txt`` beside each video instead.
        missing_caption: for videos without a caption when the data has captions: ``empty``
            trains on them with the caption ``""``; ``skip`` leaves them out. Either way one
            warning counts them.
    """

    def __init__(
        self,
        root: str | Path,
        clip_len: int = 16,
        frame_stride: int = 1,
        size: int = 32,
        split: str | None = None,
        val_fraction: float = 0.1,
        split_file: str | Path | None = None,
        augment: bool | None = None,
        short_video: str = "skip",
        cache_dir: str | Path | None = None,
        index_workers: int = 4,
        max_retries: int = 10,
        seed: int = 0,
        captions: str | Path | None = None,
        missing_caption: str = "empty",
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise MissingFileError(
                f"Video folder {root} does not exist: set data.root to a folder of videos."
            )
        if split not in (None, *SPLITS):
            raise UserError(f"split must be 'train', 'val' or None, got {split!r}.")
        check_missing_caption(missing_caption)
        self.root, self.split = root, split
        self.clip_len, self.frame_stride, self.size = clip_len, frame_stride, size
        self.augment = split == "train" if augment is None else augment
        self.short_video = short_video
        self.max_retries, self.seed = max_retries, seed
        presplit = (root / "train").is_dir() and (root / "val").is_dir()
        index = VideoIndex(root, Path(cache_dir) if cache_dir else None, index_workers)

        def parts(rel: str) -> list[str]:  # path parts below the split folder, if pre-split
            p = rel.split("/")
            return p[1:] if presplit and p[0] in SPLITS else p

        listed = read_split_file(split_file) if split_file is not None else None
        labelled = any(len(parts(rel)) > 1 for rel in index.rel_paths)
        self.classes = sorted({parts(rel)[0] for rel in index.rel_paths if len(parts(rel)) > 1})
        problems = dict(index.problems)
        self.records: list[VideoRecord] = []
        span = clip_span(clip_len, frame_stride)
        if listed is not None:
            on_disk = set(index.rel_paths)
            for rel in sorted(listed - on_disk):
                problems[rel] = f"listed in {Path(split_file).name} but not found under the root"
        for rel in index.rel_paths:
            if listed is not None:
                if rel not in listed:
                    continue
            elif split is not None:
                in_split = (
                    rel.split("/")[0] == split
                    if presplit
                    else (hash_split(rel, val_fraction) == split)
                )
                if not in_split:
                    continue
            if rel not in index.info:
                continue
            if labelled and len(parts(rel)) == 1:
                problems[rel] = "not inside a class folder (labels come from sub-folders)"
                continue
            meta = index.info[rel]
            if meta["num_frames"] < span and short_video == "skip":
                problems[rel] = (
                    f"too short: {meta['num_frames']} frames < {span} for clip_len {clip_len} "
                    f"at stride {frame_stride} (data.short_video=loop or repeat_last keeps it)"
                )
                continue
            label = self.classes.index(parts(rel)[0]) if labelled else -1
            self.records.append(VideoRecord(rel, label=label, **meta))
        if problems:
            listing = "\n".join(f"  {rel}: {why}" for rel, why in sorted(problems.items()))
            rank_zero_warn(f"Left out {len(problems)} video(s) under {root}:\n{listing}")
        # Decided over the whole folder, so the train and val sets agree on having captions.
        by_path = video_captions(root, index.rel_paths, captions)
        self.captions: list[str] | None = None  # one per record, when the data has captions
        if by_path is not None:
            self.captions = self._caption_records(by_path, missing_caption)
        if not self.records:
            raise UserError(
                f"No usable videos under {root} for split={split!r} (clip_len={clip_len}, "
                f"frame_stride={frame_stride}); see the warning above for each file."
            )
        self.labelled = labelled
        self._failed: set[str] = set()

    def _caption_records(self, by_path: dict[str, str], policy: str) -> list[str]:
        """The caption of each record; records without one get ``""`` or are left out
        (``policy`` ``empty`` or ``skip``), reported in one warning."""
        missing = [r.path for r in self.records if r.path not in by_path]
        if missing:
            action = (
                'trained with the caption "" (data.missing_caption=skip leaves them out)'
                if policy == "empty"
                else "left out (data.missing_caption=skip)"
            )
            warn_once(
                f"{len(missing)} of {len(self.records)} video(s) under {self.root} "
                f"(split={self.split}) have no caption, {action}: {first_names(missing)}"
            )
        if policy == "skip":
            self.records = [r for r in self.records if r.path in by_path]
        return [by_path.get(r.path, "") for r in self.records]

    @property
    def num_classes(self) -> int:
        """Number of class folders (0 when unlabelled)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def _decode_size(self, record: VideoRecord) -> tuple[int, int]:
        """Decode size with the short side at ``size`` and the aspect ratio kept."""
        return short_side_size(record.height, record.width, self.size)

    def _indices(self, record: VideoRecord, rng: np.random.Generator) -> list[int]:
        """The clip's frame indices: the first draw from a sample's generator."""
        mode = "random" if self.augment else "center"
        return clip_indices(
            record.num_frames, self.clip_len, self.frame_stride, mode, rng, self.short_video
        )

    def _crop_and_flip(
        self, rng: np.random.Generator, height: int, width: int
    ) -> tuple[int, int, bool]:
        """``(top, left, flip)`` of the crop from decoded ``(height, width)`` frames: the
        draws after :meth:`_indices`."""
        if not self.augment:
            return (height - self.size) // 2, (width - self.size) // 2, False
        top = int(rng.integers(0, height - self.size + 1))
        left = int(rng.integers(0, width - self.size + 1))
        return top, left, bool(rng.random() < 0.5)

    def load(self, record: VideoRecord, rng: np.random.Generator) -> np.ndarray:
        """Decode, crop and flip one clip of ``record`` → uint8 ``(T, size, size, 3)``."""
        return self._load(record, rng)[0]

    def _load(self, record: VideoRecord, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """:meth:`load`, and whether the clip was flipped."""
        indices = self._indices(record, rng)
        height, width = self._decode_size(record)
        if (height, width) == (record.height, record.width):
            height = width = -1  # native size: skip decord's scaler altogether
        reader = VideoReader(self.root / record.path, width=width, height=height)
        frames = reader.get_batch(indices)
        top, left, flip = self._crop_and_flip(rng, *frames.shape[1:3])  # as decoded
        frames = frames[:, top : top + self.size, left : left + self.size]
        return (frames[:, :, ::-1] if flip else frames), flip

    def flipped(self, index: int, epoch: int) -> bool:
        """Whether sample ``(index, epoch)`` is flipped, found without decoding: the same
        draws as :meth:`load` on frames of the size decoding asks for (decord decodes to
        exactly that size). A sample whose video fails to decode is replaced by another
        video's clip, which this cannot foresee."""
        record = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        self._indices(record, rng)
        return self._crop_and_flip(rng, *self._decode_size(record))[2]

    def caption(self, index: int, epoch: int) -> str:
        """The caption of sample ``(index, epoch)``, mirrored when the clip is flipped.

        Raises:
            UserError: the data has no captions.
        """
        if self.captions is None:
            raise UserError(f"{self.root} has no captions: add .txt files or set data.captions.")
        text = self.captions[index]
        return mirror_caption(text) if self.flipped(index, epoch) else text

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample ``key``: an index, or an ``(index, epoch)`` pair from :class:`EpochSampler`.

        With a pair, the clip start, crop and flip come from ``(seed, epoch, index)``: the same
        on any worker or rank, and after a resume. With a bare index they come from the torch
        RNG, which Lightning seeds per rank and worker (``seed_everything(workers=True)``).
        """
        if isinstance(key, tuple):
            index, epoch = key
            rng = np.random.default_rng([self.seed, epoch, index])
        else:
            index = key
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        for _ in range(self.max_retries + 1):
            record = self.records[index]
            try:
                frames, flip = self._load(record, rng)
                break
            except VideoReadError as error:
                last_error = error
                if record.path not in self._failed:
                    self._failed.add(record.path)
                    log.warning("Skipping unreadable video: %s", error)
                index = int(rng.integers(len(self.records)))
        else:
            raise DataError(
                f"{self.max_retries + 1} samples in a row failed to decode under {self.root} "
                f"(last: {last_error}); check the files, then delete the index cache in "
                f"{default_cache_dir()} to rebuild it."
            )
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
        sample = {
            "video": video.float().div_(127.5).sub_(1.0),
            "fps": torch.tensor(record.fps / self.frame_stride, dtype=torch.float32),
        }
        if self.labelled:
            sample["label"] = torch.tensor(record.label, dtype=torch.long)
        if self.captions is not None:
            text = self.captions[index]  # of the video decoded, after any replacement
            sample["caption"] = mirror_caption(text) if flip else text
        return sample
