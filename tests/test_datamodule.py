"""The data modules: batches, configs, and how ranks and workers share the data."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import link_or_copy
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vdm.data.datamodule import MovingShapesDataModule, VideoDataModule
from vdm.data.dataset import VideoClipDataset

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_data(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides)).data


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes_data")


def test_moving_shapes_batches_have_the_documented_layout(shapes_dir):
    dm = MovingShapesDataModule(
        data_dir=shapes_dir, num_train=8, num_val=4, batch_size=4, num_workers=0, clip_len=8
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (8, 4)
    assert dm.train_set.classes == ["circle", "square", "triangle"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["label"].dtype == torch.long and set(batch["label"].tolist()) <= {0, 1, 2}
    assert torch.equal(batch["fps"], torch.full((4,), 8.0))
    val = list(dm.val_dataloader())
    assert sum(len(b["video"]) for b in val) == 4  # validation keeps every clip


def test_shapes_config_reaches_the_data_module(shapes_dir):
    cfg = compose_data(
        "data=shapes",
        f"data.data_dir={shapes_dir}",
        "data.num_train=6",
        "data.num_val=3",
        "data.num_frames=12",
        "data.render_seed=5",
        "seed=9",
        "data.clip_len=6",
        "data.frame_stride=2",
        "data.size=24",
        "data.batch_size=3",
        "data.num_workers=0",
        "data.pin_memory=true",
        "data.persistent_workers=false",
        "data.short_video=loop",
        "data.num_classes=0",
    )
    dm = instantiate(cfg)
    assert isinstance(dm, MovingShapesDataModule)
    assert (dm.spec.num_train, dm.spec.num_val, dm.spec.num_frames, dm.spec.seed, dm.spec.size) == (
        6,
        3,
        12,
        5,
        24,
    )
    assert (dm.clip_len, dm.frame_stride, dm.size, dm.batch_size) == (6, 2, 24, 3)
    assert (dm.num_workers, dm.pin_memory, dm.persistent_workers) == (0, True, False)
    assert dm.short_video == "loop" and dm.num_classes == 0 and dm.channels == 3
    assert dm.seed == 9  # shuffling and augmentation follow the run seed
    dm.prepare_data()
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.batch_size == 3 and loader.pin_memory
    assert next(iter(loader))["video"].shape == (3, 3, 6, 24, 24)
    assert dm.root.parent == shapes_dir / "moving_shapes"


def test_folder_config_reaches_the_data_module(shared_videos):
    root = shared_videos / "real"
    cfg = compose_data(
        "data=folder",
        f"data.root={root}",
        "data.val_fraction=0.5",
        "data.num_classes=7",
        "data.size=16",
        "data.clip_len=4",
        "data.num_workers=0",
    )
    dm = instantiate(cfg)
    assert isinstance(dm, VideoDataModule) and dm.root == root and dm.val_fraction == 0.5
    dm.setup()
    assert 4 <= len(dm.val_set) <= 12 and len(dm.train_set) + len(dm.val_set) == 16
    with pytest.raises(Exception, match="root"):  # root is required: ???
        instantiate(compose_data("data=folder"))


def test_split_files_reach_the_data_module(shared_videos, tmp_path):
    (tmp_path / "train.txt").write_text("Other/mmaction2_part_0.mp4\nOther/mmaction2_test.avi\n")
    (tmp_path / "val.txt").write_text("Wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi\n")
    args = ["data=folder", f"data.root={shared_videos / 'real'}", "data.size=16",
            "data.clip_len=4", "data.num_workers=0"]  # fmt: skip
    dm = instantiate(compose_data(*args, f"data.split_files.train={tmp_path / 'train.txt'}",
                                  f"data.split_files.val={tmp_path / 'val.txt'}"))  # fmt: skip
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (2, 1)
    with pytest.raises(Exception, match="set both train and val"):
        instantiate(compose_data(*args, f"data.split_files.train={tmp_path / 'train.txt'}"))


def test_wrong_class_count_and_missing_root_name_the_fix(shared_videos, tmp_path):
    dm = VideoDataModule(shared_videos / "real", num_classes=5, clip_len=4, size=16)
    with pytest.raises(ValueError, match="set data.num_classes=7"):
        dm.setup()
    with pytest.raises(FileNotFoundError, match="set data.root"):
        VideoDataModule(tmp_path / "missing").prepare_data()
    with pytest.raises(ValueError, match="data.channels must be 3"):
        VideoDataModule(tmp_path, channels=1)


@pytest.fixture
def one_long_video_four_times(tmp_path, shared_videos):
    """Four links to one 300-frame video: any difference between samples is the RNG's."""
    src = shared_videos / "real" / "Other" / "mmaction2_test.mp4"
    for i in range(4):
        link_or_copy(src, tmp_path / f"copy_{i}.mp4")
    return tmp_path


def _epoch_clips(dm, rank, world, epoch=0):
    """Keys and videos of one epoch on ``rank`` of ``world``, as Lightning would load them."""
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
    loader = dm._loader(dm.train_set, train=True)
    loader.sampler.set_epoch(epoch)  # Lightning does this at every epoch start
    keys = list(loader.sampler)
    return keys, torch.cat([b["video"] for b in loader])


def test_ranks_get_disjoint_shards_and_clips_depend_on_epoch_and_index_only(
    one_long_video_four_times,
):
    dm = VideoDataModule(
        one_long_video_four_times,
        clip_len=4,
        size=16,
        batch_size=1,
        num_workers=2,
        persistent_workers=False,
    )
    dm.train_set = VideoClipDataset(one_long_video_four_times, clip_len=4, size=16, augment=True)
    (keys0, clips0), (keys1, clips1) = _epoch_clips(dm, 0, 2), _epoch_clips(dm, 1, 2)
    indices0, indices1 = {i for i, _ in keys0}, {i for i, _ in keys1}
    assert indices0.isdisjoint(indices1) and indices0 | indices1 == set(range(4))
    # four copies of one video: clips differ only through their (epoch, index) seed
    all_clips = torch.cat([clips0, clips1])
    assert len({c.sum().item() for c in all_clips}) == 4
    # the same key gives the same clip on a single process (any worker, any rank)
    keys, clips = _epoch_clips(dm, 0, 1)
    by_key = dict(zip(keys, clips, strict=True))
    for key, clip in zip(keys0 + keys1, all_clips, strict=True):
        assert torch.equal(by_key[key], clip)
    # a new epoch draws new clips
    _, next_epoch = _epoch_clips(dm, 0, 1, epoch=1)
    assert not torch.equal(next_epoch.sort(0).values, clips.sort(0).values)
