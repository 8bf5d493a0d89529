"""Data-loading throughput: clips/s from the DataModule, and its overhead over raw decord.

    python bench/data.py [--batches 30 --workers 2 --videos ../shared/data/videos/real]

For the moving-shapes set and for a folder of real clips it prints:
- clips/s delivered by the DataModule's train loader (``--workers`` processes, after warm-up);
- single-process time per clip of ``VideoClipDataset.__getitem__`` against calling decord
  directly on the same files, frame indices and decode size, as a ratio (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import decord
import torch

from vdm.data.clips import clip_indices
from vdm.data.datamodule import MovingShapesDataModule, VideoDataModule
from vdm.data.dataset import VideoClipDataset

DEFAULT_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "real"


def loader_clips_per_second(dm: VideoDataModule, batches: int) -> float:
    """Clips/s over ``batches`` batches of the train loader, after one warm-up batch (which
    pays for starting the workers)."""
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up is not throughput
    done, clips, start = 0, 0, time.perf_counter()
    while done < batches:
        for batch in iterator:  # epochs may be short: start new ones until enough batches
            clips += len(batch["video"])
            done += 1
            if done >= batches:
                break
        iterator = iter(loader)
    elapsed = time.perf_counter() - start
    return clips / elapsed


def overhead_ratio(dataset: VideoClipDataset, repeats: int = 3) -> tuple[float, float]:
    """Seconds per clip through the dataset and through raw decord, same work, one process."""
    dataset.augment = False  # centre clips: the same indices for both paths
    ours, raw = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        ours.append((time.perf_counter() - start) / len(dataset))
        start = time.perf_counter()
        for record in dataset.records:
            indices = clip_indices(
                record.num_frames,
                dataset.clip_len,
                dataset.frame_stride,
                "center",
                short_video=dataset.short_video,
            )
            height, width = dataset._decode_size(record)
            if (height, width) == (record.height, record.width):
                height = width = -1
            reader = decord.VideoReader(
                str(dataset.root / record.path), width=width, height=height, num_threads=1
            )
            reader.get_batch(indices).asnumpy()
        raw.append((time.perf_counter() - start) / len(dataset))
    return statistics.median(ours), statistics.median(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS)
    args = parser.parse_args()
    torch.manual_seed(0)
    common = dict(batch_size=args.batch_size, num_workers=args.workers, persistent_workers=True)
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "moving shapes 16x32²": MovingShapesDataModule(
                data_dir=Path(tmp) / "data", cache_dir=Path(tmp) / "cache", **common
            ),
            "real clips 16x64², stride 2": VideoDataModule(
                args.videos,
                clip_len=16,
                frame_stride=2,
                size=64,
                val_fraction=0.2,
                cache_dir=Path(tmp) / "cache",
                **common,
            ),
        }
        print(
            f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, decord "
            f"{decord.__version__}, batch {args.batch_size}, {args.workers} workers"
        )
        print("| data | loader clips/s | dataset s/clip | raw decord s/clip | overhead ratio |")
        print("|---|---:|---:|---:|---:|")
        for name, dm in cases.items():
            rate = loader_clips_per_second(dm, args.batches)
            ours, raw = overhead_ratio(dm.train_set)
            print(
                f"| {name} | {rate:.1f} | {ours:.4f} | {raw:.4f} | {ours / raw:.2f} |", flush=True
            )


if __name__ == "__main__":
    main()
