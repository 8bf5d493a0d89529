"""The data modules: batches, configs, and how ranks and workers share the data."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import link_or_copy
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vdm.data.datamodule import MovingShapesDataModule, VideoDataModule
from vdm.data.dataset import VideoClipDataset
from vdm.data.shape_captions import parse_caption
from vdm.data.shapes import CLASSES
from vdm.files.video import write_mp4

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
    assert dm.dataset_options["short_video"] == "loop" and dm.num_classes == 0
    assert dm.channels == 3
    assert dm.seed == 9  # shuffling and augmentation follow the run seed
    dm.prepare_data()
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.batch_size == 3 and loader.pin_memory and loader.sampler.seed == 9
    assert dm.train_set.seed == dm.val_set.seed == 9
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
    assert isinstance(dm, VideoDataModule) and dm.root == root
    assert dm.dataset_options["val_fraction"] == 0.5
    dm.setup()
    assert dm.train_set.clip_len == 4 and dm.val_set.size == 16
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


@pytest.fixture
def textured_videos(tmp_path):
    """A pre-split folder of three 40-frame 24×32 lossless videos (one for val) whose pixels
    encode (frame, row, column): a different clip start, crop or flip is a different clip."""
    t, y, x = np.meshgrid(np.arange(40), np.arange(24), np.arange(32), indexing="ij")
    frames = np.stack([6 * t, 10 * y, 8 * x], axis=-1).astype(np.uint8)
    for split, name in [("train", "a"), ("train", "b"), ("val", "c")]:
        write_mp4(tmp_path / split / f"{name}.mp4", frames, fps=10, lossless=True)
    return tmp_path


def _module(root, seed):
    """Training clips of 4 frames at 24 px: the native height, so the crop slides across the
    32-px width and is never resized."""
    dm = VideoDataModule(root, clip_len=4, size=24, batch_size=1, num_workers=0, seed=seed)
    dm.setup()
    return dm


def test_the_same_seed_gives_the_same_epoch_of_training_clips(textured_videos):
    (keys1, clips1), (keys2, clips2) = (
        _epoch_clips(_module(textured_videos, seed=5), 0, 1, epoch=3) for _ in range(2)
    )
    assert keys1 == keys2 and torch.equal(clips1, clips2)
    # and data.seed is the dataset's augmentation seed, not a default of 0
    reference = VideoClipDataset(textured_videos, clip_len=4, size=24, split="train", seed=5)
    for key, clip in zip(keys1, clips1, strict=True):
        assert torch.equal(reference[key]["video"], clip)


def test_the_seed_changes_the_per_clip_augmentation(textured_videos):
    sets = [_module(textured_videos, seed).train_set for seed in (0, 1)]
    assert [s.seed for s in sets] == [0, 1]
    keys = [(index, epoch) for index in range(2) for epoch in range(3)]
    same = [torch.equal(sets[0][key]["video"], sets[1][key]["video"]) for key in keys]
    assert not all(same), "seeds 0 and 1 gave identical training clips"
    # the seed changes augmentation only: validation clips are the centred ones either way
    val = [_module(textured_videos, seed).val_set for seed in (0, 1)]
    assert torch.equal(val[0][(0, 0)]["video"], val[1][(0, 0)]["video"])


@pytest.mark.parametrize("key", ["clip_length", "augment", "split_file"])
def test_an_unknown_data_key_is_refused_in_one_line_naming_it(textured_videos, key):
    with pytest.raises(TypeError, match=rf"data\.{key} is not a data option") as error:
        VideoDataModule(textured_videos, **{key: 1})
    message = str(error.value)
    assert "\n" not in message and "data.clip_len" in message and "data.batch_size" in message


def test_an_unknown_data_key_is_refused_through_the_configs(textured_videos, tmp_path):
    with pytest.raises(Exception, match=r"data\.clip_length is not a data option"):
        instantiate(
            compose_data("data=folder", f"data.root={textured_videos}", "+data.clip_length=4")
        )
    with pytest.raises(
        Exception, match=r"data\.clip_length is not a data option.*data\.render_seed"
    ):
        instantiate(compose_data("data=shapes", f"data.data_dir={tmp_path}", "+data.clip_length=4"))
    # a dataset argument the configs do not list passes through with a +
    dm = instantiate(
        compose_data("data=folder", f"data.root={textured_videos}", "+data.max_retries=3")
    )
    assert dm.dataset_options["max_retries"] == 3


def test_moving_shapes_batches_carry_their_captions(tmp_path):
    dm = MovingShapesDataModule(
        data_dir=tmp_path, num_train=8, num_val=4, size=16, batch_size=4, num_workers=0
    )
    dm.prepare_data()
    dm.setup("fit")
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))):
        captions = batch["caption"]
        assert isinstance(captions, list) and len(captions) == 4
        for text, label in zip(captions, batch["label"].tolist(), strict=True):
            # A flip may have mirrored the directions; the shape is the clip's class either way.
            assert {d.shape for d in parse_caption(text)} == {CLASSES[label]}, text


def test_caption_options_reach_the_data_module_from_the_folder_config(textured_videos):
    captions = textured_videos / "captions.csv"
    captions.write_text("path,caption\ntrain/a.mp4,a moving texture\nval/c.mp4,another one\n")
    cfg = compose_data(
        "data=folder", f"data.root={textured_videos}", f"data.captions={captions}",
        "data.missing_caption=skip", "data.size=24", "data.clip_len=4", "data.batch_size=1",
        "data.num_workers=0",
    )  # fmt: skip
    dm = instantiate(cfg)
    assert dm.dataset_options["captions"] == str(captions)
    dm.setup()
    assert [r.path for r in dm.train_set.records] == ["train/a.mp4"]  # b.mp4 skipped
    assert next(iter(dm.train_dataloader()))["caption"] == ["a moving texture"]
    assert next(iter(dm.val_dataloader()))["caption"] == ["another one"]
    defaults = compose_data("data=folder", f"data.root={textured_videos}")
    assert (defaults.captions, defaults.missing_caption) == (None, "empty")
