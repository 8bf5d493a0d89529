"""The real clips a model is scored against: a seeded random subset of a split, decoded as the
data module decodes it (centre windows for validation)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Subset

from vdm.errors import UserError
from vdm.inference.build import instantiate_config

log = logging.getLogger(__name__)


def real_data_config(
    data: DictConfig | None, run_cfg: DictConfig, frames: int | None, batch_size: int
) -> DictConfig:
    """The real clips' data config: ``data`` if given, else the training run's, with
    ``batch_size`` and with ``frames`` frames per clip.

    Args:
        frames: frames per clip; None = ``data.clip_len`` when ``data`` is given, else the
            run's training clip length.

    Raises:
        ValueError: ``frames`` and ``data.clip_len`` are both given and differ.
    """
    given = data is not None and data.get("clip_len") is not None
    if given and frames is not None and frames != data.clip_len:
        raise UserError(
            f"frames={frames} and data.clip_len={data.clip_len} disagree: real and generated "
            "clips must have the same length; set one of them."
        )
    config = OmegaConf.create(OmegaConf.to_container(data or run_cfg.data, resolve=True))
    with open_dict(config):
        config.clip_len = frames or (data.clip_len if given else run_cfg.data.clip_len)
        config.batch_size = batch_size
    return config


def real_batches(
    data_cfg: DictConfig, split: str, count: int, seed: int, batch_size: int
) -> Iterator[dict]:
    """Batches (``video (B, C, T, H, W)``, ``label``, ``fps``) of ``count`` clips (fewer if the
    split is smaller) drawn at random, by ``seed``, from ``split`` (``val`` or ``train``)."""
    datamodule = instantiate_config(data_cfg, "data")
    datamodule.prepare_data()
    datamodule.setup("validate")
    dataset = {"val": datamodule.val_set, "train": datamodule.train_set}.get(split)
    if dataset is None:
        raise UserError(f"split={split}: use val or train.")
    if len(dataset) < count:
        log.warning("split=%s has %d clips, fewer than %d: using all", split, len(dataset), count)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    subset = Subset(dataset, order[:count].tolist())
    workers = data_cfg.get("num_workers", 0)
    yield from DataLoader(subset, batch_size=batch_size, num_workers=workers)
