"""LightningDataModules: any folder of videos, and the embedded moving-shapes set."""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning import LightningDataModule
from lightning.fabric.utilities.seed import pl_worker_init_function
from torchdata.stateful_dataloader import StatefulDataLoader

from vdm.data.dataset import VideoClipDataset
from vdm.data.index import VideoIndex
from vdm.data.sampler import EpochSampler
from vdm.data.shapes import CLASSES, ShapesSpec, generate
from vdm.errors import DataError, MissingFileError, UnknownKeyError, UserError

log = logging.getLogger(__name__)
# torchdata 0.11 calls a deprecated torch API on every iterator; the message is noise to users.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")

# VideoClipDataset arguments the data module sets for each split itself (root, the split, its
# split file, augmentation on for train only), so they are not data.* options.
PER_SPLIT_ARGUMENTS = ("root", "split", "split_file", "augment")


def dataset_defaults() -> dict[str, Any]:
    """The :class:`VideoClipDataset` arguments a data config may set, with their defaults."""
    parameters = inspect.signature(VideoClipDataset).parameters
    return {
        name: parameter.default
        for name, parameter in parameters.items()
        if name not in PER_SPLIT_ARGUMENTS
    }


def _init_arguments(cls: type) -> list[str]:
    """The named constructor arguments of ``cls`` and of its data-module bases, in MRO order."""
    names: list[str] = []
    for klass in cls.__mro__:
        if not (issubclass(klass, VideoDataModule) and "__init__" in vars(klass)):
            continue
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            named = parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
            if named and name != "self" and name not in names:
                names.append(name)
    return names


class VideoDataModule(LightningDataModule):
    """Train and val loaders of clips from a folder of videos.

    Each rank loads a disjoint shard of every epoch's permutation (:class:`EpochSampler`;
    set the trainer's ``use_distributed_sampler=False``, as ``conf/trainer`` does), and each
    clip's augmentation comes from ``(seed, epoch, index)``. The loaders are torchdata
    ``StatefulDataLoader``s, whose position Lightning saves in checkpoints, so a run resumed
    mid-epoch continues with exactly the batches it would have seen.

    How a clip is cut (``clip_len``, ``frame_stride``, ``size``, ``short_video``, ...) is
    declared once, by :class:`VideoClipDataset`: its keyword arguments pass through
    ``**dataset_options`` to the train and val sets, and ``seed`` also seeds the shuffling.

    Example:
        >>> dm = VideoDataModule("UCF-101/", clip_len=16, size=64, batch_size=8, num_classes=101)
        >>> trainer.fit(model, datamodule=dm)

    Args:
        root: folder of videos; class sub-folders give labels; ``split_files`` or ``train/`` +
            ``val/`` folders give the split, otherwise files are split by a hash of their path.
        batch_size: clips per batch on each device (the global batch is this × devices).
        num_workers: DataLoader worker processes per device; 0 decodes in the main process.
        pin_memory: page-locked batches for faster host-to-GPU copies (turn on for GPU runs).
        persistent_workers: keep workers alive between epochs (saves their start-up time).
        split_files: ``{"train": path, "val": path}`` (both None: none): the files of each split
            (UCF-101's ``trainlist01.txt`` / ``testlist01.txt``), instead of the hash split
            that puts clips of one UCF-101 group (same actor, same scene) on both sides.
        num_classes: the class count the model expects; 0 trains unconditionally; a positive
            value must match the number of class folders.
        channels: channels of a decoded clip (RGB: 3); declared for the model to read.
        **dataset_options: :class:`VideoClipDataset` keyword arguments for both splits
            (``clip_len``, ``frame_stride``, ``size``, ``val_fraction``, ``short_video``,
            ``cache_dir``, ``index_workers``, ``max_retries``, ``seed``, ``captions``,
            ``missing_caption``), documented there; ``seed`` seeds both the shuffling and the
            per-clip augmentation. With captions, batches carry ``caption: list[str]``.

    Raises:
        TypeError: a key that is neither an argument here nor a dataset option, named as
            ``data.<key>`` with the keys allowed.
    """

    def __init__(
        self,
        root: str | Path | None,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        split_files: dict[str, str | Path] | None = None,
        num_classes: int = 0,
        channels: int = 3,
        **dataset_options: Any,
    ) -> None:
        super().__init__()
        if channels != 3:
            raise UserError(f"Videos decode to RGB: data.channels must be 3, got {channels}.")
        defaults = dataset_defaults()
        unknown = sorted(set(dataset_options) - set(defaults))
        if unknown:
            allowed = [*_init_arguments(type(self)), *defaults]
            raise UnknownKeyError(
                f"data.{unknown[0]} is not a data option: use one of "
                f"{', '.join(f'data.{key}' for key in allowed)}."
            )
        # Every option, defaults included, so both splits and the sampler read the same values.
        self.dataset_options: dict[str, Any] = defaults | dataset_options
        self.root = Path(root).expanduser() if root is not None else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        split_files = {k: v for k, v in (split_files or {}).items() if v is not None}
        self.split_files = split_files or None  # all None: no split files
        if self.split_files is not None and set(self.split_files) != {"train", "val"}:
            raise UserError(
                f"data.split_files sets {', '.join(sorted(self.split_files))}: set both train "
                "and val, e.g. data.split_files.train=/data/ucfTrainTestlist/trainlist01.txt "
                "data.split_files.val=/data/ucfTrainTestlist/testlist01.txt."
            )
        self.num_classes, self.channels = num_classes, channels
        self.train_set: VideoClipDataset | None = None
        self.val_set: VideoClipDataset | None = None
        # Set by the training task: ``(training set, trainer) -> the set to train on`` (its
        # latent cache); None trains on the decoded clips.
        self.training_set_as: Callable | None = None

    # Read-only views of the dataset options that models, renderers and configs ask for.
    @property
    def clip_len(self) -> int:
        """Frames per clip (``data.clip_len``)."""
        return self.dataset_options["clip_len"]

    @property
    def frame_stride(self) -> int:
        """Every ``frame_stride``-th frame is taken (``data.frame_stride``)."""
        return self.dataset_options["frame_stride"]

    @property
    def size(self) -> int:
        """Clip height and width (``data.size``)."""
        return self.dataset_options["size"]

    @property
    def seed(self) -> int:
        """Seed of the shuffling and of the per-clip augmentation (``data.seed``)."""
        return self.dataset_options["seed"]

    def _check_root(self) -> Path:
        if self.root is None or not self.root.is_dir():
            raise MissingFileError(
                f"Video folder {self.root} does not exist: set data.root to a folder of videos."
            )
        return self.root

    def prepare_data(self) -> None:
        """Build (or load) the cached index on one process, before the ranks read it."""
        cache_dir = self.dataset_options["cache_dir"]
        VideoIndex(
            self._check_root(),
            Path(cache_dir) if cache_dir else None,
            self.dataset_options["index_workers"],
        )

    def _dataset(self, split: str) -> VideoClipDataset:
        return VideoClipDataset(
            self._check_root(),
            split=split,
            split_file=self.split_files[split] if self.split_files else None,
            **self.dataset_options,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._dataset("train"), self._dataset("val")
            found = self.train_set.num_classes
            if self.num_classes and self.num_classes != found:
                raise UserError(
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
            if self.training_set_as is not None:  # e.g. its latent cache (validation stays video)
                self.train_set = self.training_set_as(self.train_set, self.trainer)
        if stage == "fit":
            self._check_a_batch_per_device()

    def _check_a_batch_per_device(self) -> None:
        """Every rank must get a full training batch: the last short one is dropped, and a run
        with none would end at step 0 and report nothing wrong."""
        world = self.trainer.world_size if self.trainer is not None else 1
        clips = len(self.train_set)
        if clips // world < self.batch_size:
            devices = f" on each of {world} devices" if world > 1 else ""
            raise DataError(
                f"data: {clips} training videos under {self.root} make no full batch of "
                f"data.batch_size={self.batch_size}{devices} (the last short batch is dropped): "
                f"lower data.batch_size to at most {max(1, clips // world)} or add videos."
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
        **kwargs: the :class:`VideoDataModule` arguments and dataset options (``clip_len``,
            ``size``, ``seed``, ...); ``size`` is also the size the set is rendered at.
    """

    def __init__(
        self,
        data_dir: str | Path = "~/.cache/vdm/data",
        num_train: int = 2000,
        num_val: int = 200,
        num_frames: int = 16,
        render_seed: int = 0,
        **kwargs: Any,
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
