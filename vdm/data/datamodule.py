"""LightningDataModules: any folder of videos, and the embedded moving-shapes set."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

from lightning import LightningDataModule
from lightning.fabric.utilities.seed import pl_worker_init_function
from torchdata.stateful_dataloader import StatefulDataLoader

from vdm.data.dataset import VideoClipDataset
from vdm.data.index import VideoIndex
from vdm.data.sampler import EpochSampler
from vdm.data.shapes import CLASSES, ShapesSpec, generate

log = logging.getLogger(__name__)
# torchdata 0.11 calls a deprecated torch API on every iterator; the message is noise to users.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


class VideoDataModule(LightningDataModule):
    """Train and val loaders of clips from a folder of videos.

    Each rank loads a disjoint shard of every epoch's permutation (:class:`EpochSampler`;
    set the trainer's ``use_distributed_sampler=False``, as ``conf/trainer`` does), and each
    clip's augmentation comes from ``(seed, epoch, index)``. The loaders are torchdata
    ``StatefulDataLoader``s, whose position Lightning saves in checkpoints, so a run resumed
    mid-epoch continues with exactly the batches it would have seen.

    Example:
        >>> dm = VideoDataModule("UCF-101/", clip_len=16, size=64, batch_size=8, num_classes=101)
        >>> trainer.fit(model, datamodule=dm)

    Args:
        root: folder of videos; class sub-folders give labels; ``split_files`` or ``train/`` +
            ``val/`` folders give the split, otherwise files are split by a hash of their path.
        clip_len: frames per clip.
        frame_stride: take every ``frame_stride``-th frame.
        size: clip height and width (short side resized while decoding, then cropped).
        batch_size: clips per batch on each device (the global batch is this × devices).
        num_workers: DataLoader worker processes per device; 0 decodes in the main process.
        pin_memory: page-locked batches for faster host-to-GPU copies (GPU runs).
        persistent_workers: keep workers alive between epochs (saves their start-up time).
        val_fraction: share of files used for validation when the folder is not pre-split.
        split_files: ``{"train": path, "val": path}`` (both None: none): the files of each split
            (UCF-101's ``trainlist01.txt`` / ``testlist01.txt``), instead of the hash split
            that puts clips of one UCF-101 group (same actor, same scene) on both sides.
        short_video: ``skip``, ``loop`` or ``repeat_last`` for videos shorter than one clip.
        num_classes: the class count the model expects; 0 trains unconditionally; a positive
            value must match the number of class folders.
        channels: channels of a decoded clip (RGB: 3); declared for the model to read.
        cache_dir: where the video index is cached (default ``~/.cache/vdm``).
        seed: seed of the shuffling and of the per-clip augmentation.
    """

    def __init__(
        self,
        root: str | Path,
        clip_len: int = 16,
        frame_stride: int = 1,
        size: int = 32,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        val_fraction: float = 0.1,
        split_files: dict[str, str | Path] | None = None,
        short_video: str = "skip",
        num_classes: int = 0,
        channels: int = 3,
        cache_dir: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channels != 3:
            raise ValueError(f"Videos decode to RGB: data.channels must be 3, got {channels}.")
        self.root = Path(root).expanduser() if root is not None else None
        self.clip_len, self.frame_stride, self.size = clip_len, frame_stride, size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.val_fraction, self.short_video = val_fraction, short_video
        split_files = {k: v for k, v in (split_files or {}).items() if v is not None}
        self.split_files = split_files or None  # all None: no split files
        if self.split_files is not None and set(self.split_files) != {"train", "val"}:
            raise ValueError(
                f"data.split_files sets {', '.join(sorted(self.split_files))}: set both train "
                "and val, e.g. data.split_files.train=/data/ucfTrainTestlist/trainlist01.txt "
                "data.split_files.val=/data/ucfTrainTestlist/testlist01.txt."
            )
        self.num_classes, self.channels = num_classes, channels
        self.cache_dir, self.seed = cache_dir, seed
        self.train_set: VideoClipDataset | None = None
        self.val_set: VideoClipDataset | None = None

    def _check_root(self) -> Path:
        if self.root is None or not self.root.is_dir():
            raise FileNotFoundError(
                f"Video folder {self.root} does not exist: set data.root to a folder of videos."
            )
        return self.root

    def prepare_data(self) -> None:
        """Build (or load) the cached index on one process, before the ranks read it."""
        VideoIndex(self._check_root(), Path(self.cache_dir) if self.cache_dir else None)

    def _dataset(self, split: str) -> VideoClipDataset:
        return VideoClipDataset(
            self._check_root(),
            self.clip_len,
            self.frame_stride,
            self.size,
            split=split,
            val_fraction=self.val_fraction,
            split_file=self.split_files[split] if self.split_files else None,
            short_video=self.short_video,
            cache_dir=self.cache_dir,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._dataset("train"), self._dataset("val")
            found = self.train_set.num_classes
            if self.num_classes and self.num_classes != found:
                raise ValueError(
                    f"data.num_classes={self.num_classes} but {self.root} has {found} class "
                    f"folders: set data.num_classes={found} (or 0 to train unconditionally)."
                )
            log.info(
                "Data: %d train / %d val videos, %d classes, from %s",
                len(self.train_set),
                len(self.val_set),
                found,
                self.root,
            )

    def _loader(self, dataset: VideoClipDataset, train: bool) -> StatefulDataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        sampler = EpochSampler(
            len(dataset),
            shuffle=train,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            drop_last=train,
        )
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            worker_init_fn=functools.partial(pl_worker_init_function, rank=rank),
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, train=False)


class MovingShapesDataModule(VideoDataModule):
    """The embedded moving-shapes set, rendered once into ``data_dir`` and then read through
    :class:`VideoClipDataset` like any folder, so it exercises the real decode path.

    Args:
        data_dir: where rendered sets live (``<data_dir>/moving_shapes/<spec hash>/``).
        num_train: training clips to render.
        num_val: validation clips to render.
        num_frames: frames per rendered clip (≥ ``clip_len``; clips are windows of it).
        render_seed: seed of the rendering; a new seed is a new data set.
        **kwargs: the :class:`VideoDataModule` arguments (``clip_len``, ``size``, ...).
    """

    def __init__(
        self,
        data_dir: str | Path = "~/.cache/vdm/data",
        num_train: int = 2000,
        num_val: int = 200,
        num_frames: int = 16,
        render_seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("num_classes", len(CLASSES))
        super().__init__(root=None, **kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.spec = ShapesSpec(
            size=self.size,
            num_frames=num_frames,
            num_train=num_train,
            num_val=num_val,
            seed=render_seed,
        )
        self.root = self.data_dir / "moving_shapes" / self.spec.digest()

    def prepare_data(self) -> None:
        """Render the set if this spec has not been rendered yet (one process; others wait)."""
        generate(self.data_dir, self.spec, num_workers=self.num_workers)
        super().prepare_data()
