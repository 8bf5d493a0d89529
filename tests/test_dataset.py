"""VideoClipDataset on real and broken videos: shapes, labels, splits, index cache, failures."""

import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import frame_index_video, link_or_copy

from vdm.data import index as index_module
from vdm.data.dataset import VideoClipDataset
from vdm.data.index import hash_split
from vdm.files.video import write_mp4


def test_every_real_clip_decodes_to_the_asked_shape_with_folder_labels(shared_videos):
    root = shared_videos / "real"
    ds = VideoClipDataset(root, clip_len=8, frame_stride=2, size=32)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert ds.classes == folders and ds.num_classes == 7
    assert len(ds) == 16  # every clip, the .avi (mpeg4) and .mp4 (h264) ones alike
    assert {r.path.rsplit(".", 1)[1] for r in ds.records} == {"avi", "mp4"}
    for i, record in enumerate(ds.records):
        sample = ds[i]
        assert sample["video"].shape == (3, 8, 32, 32) and sample["video"].dtype == torch.float32
        assert sample["video"].min() >= -1.0 and sample["video"].max() <= 1.0
        assert sample["label"].item() == folders.index(record.path.split("/")[0])
        assert sample["fps"].item() == pytest.approx(record.fps / 2)


def test_center_crop_of_a_lossless_video_returns_exact_frames(tmp_path):
    """Decode exactness through the whole dataset path: frames 10..25 step 5, centred."""
    write_mp4(tmp_path / "a" / "clip.mp4", frame_index_video(40, 32, 32), fps=10, lossless=True)
    ds = VideoClipDataset(tmp_path, clip_len=4, frame_stride=5, size=32, augment=False)
    video = ds[0]["video"]
    frames = ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    # span 16 in 40 frames: centred start (40 - 16) // 2 = 12
    assert (frames == frame_index_video(40, 32, 32)[[12, 17, 22, 27]]).all()


def test_train_augmentation_varies_and_val_is_fixed(shared_videos):
    root = shared_videos / "real" / "Wave"
    train = VideoClipDataset(root, clip_len=4, size=32, split=None, augment=True)
    val = VideoClipDataset(root, clip_len=4, size=32, split=None, augment=False)
    torch.manual_seed(0)
    assert not torch.equal(train[0]["video"], train[0]["video"])
    assert torch.equal(val[0]["video"], val[0]["video"])
    assert "label" not in val[0]  # a flat folder is unlabelled
    assert val.num_classes == 0


def test_hash_split_is_stable_disjoint_and_near_the_fraction():
    paths = [f"class_{i % 7}/video_{i}.mp4" for i in range(2000)]
    val = [p for p in paths if hash_split(p, 0.1) == "val"]
    assert 150 < len(val) < 250
    assert [hash_split(p, 0.1) for p in paths] == [hash_split(p, 0.1) for p in paths]


def test_splits_partition_the_folder(shared_videos):
    root = shared_videos / "real"
    train = VideoClipDataset(root, clip_len=4, size=16, split="train", val_fraction=0.3)
    val = VideoClipDataset(root, clip_len=4, size=16, split="val", val_fraction=0.3)
    train_paths, val_paths = {r.path for r in train.records}, {r.path for r in val.records}
    assert train_paths.isdisjoint(val_paths) and len(train_paths | val_paths) == 16
    assert train.classes == val.classes  # labels mean the same in both splits


def test_presplit_folder_is_used_as_is(tmp_path, shared_videos):
    real = shared_videos / "real"
    link_or_copy(
        real / "Wave" / "TrumanShow_wave_f_nm_np1_fr_med_26.avi",
        tmp_path / "train" / "Wave" / "a.avi",
    )
    link_or_copy(real / "Other" / "mmaction2_part_0.mp4", tmp_path / "train" / "Other" / "b.mp4")
    link_or_copy(real / "Other" / "mmaction2_test.avi", tmp_path / "val" / "Other" / "c.avi")
    train = VideoClipDataset(tmp_path, clip_len=4, size=16, split="train")
    val = VideoClipDataset(tmp_path, clip_len=4, size=16, split="val")
    assert [r.path for r in train.records] == ["train/Other/b.mp4", "train/Wave/a.avi"]
    assert [r.path for r in val.records] == ["val/Other/c.avi"]
    assert train.classes == val.classes == ["Other", "Wave"]
    assert val[0]["label"].item() == 0


def test_split_files_pick_the_files_of_each_split(tmp_path, shared_videos):
    """UCF-101's format: trainlist lines carry a class index, testlist lines do not."""
    root = shared_videos / "real"
    (tmp_path / "trainlist01.txt").write_text(
        "Wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi 7\r\n"
        "Other/mmaction2_part_0.mp4 5\r\n"
        "\r\n"
        "Cartwheel/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi 2\r\n"
    )
    (tmp_path / "testlist01.txt").write_text(
        "Other/mmaction2_test.avi\nWave/RATRACE_wave_f_nm_np1_fr_goo_37.avi\n"
    )
    train = VideoClipDataset(root, clip_len=4, size=16, split="train",
                             split_file=tmp_path / "trainlist01.txt")  # fmt: skip
    val = VideoClipDataset(root, clip_len=4, size=16, split="val",
                           split_file=tmp_path / "testlist01.txt")  # fmt: skip
    assert sorted(r.path for r in train.records) == [
        "Cartwheel/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
        "Other/mmaction2_part_0.mp4",
        "Wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi",
    ]
    assert sorted(r.path for r in val.records) == [
        "Other/mmaction2_test.avi",
        "Wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi",
    ]
    # Labels from the 7 class folders of the whole root, the same in both splits.
    assert train.classes == val.classes and len(train.classes) == 7
    wave = train.classes.index("Wave")
    assert {r.label for r in val.records if r.path.startswith("Wave/")} == {wave}


def test_split_file_problems_are_named(tmp_path, shared_videos):
    root = shared_videos / "real"
    listing = tmp_path / "list.txt"
    listing.write_text("Other/mmaction2_part_0.mp4\nOther/missing.avi\n")
    with pytest.warns(UserWarning, match="Other/missing.avi: listed in list.txt but not found"):
        ds = VideoClipDataset(root, clip_len=4, size=16, split="train", split_file=listing)
    assert [r.path for r in ds.records] == ["Other/mmaction2_part_0.mp4"]
    with pytest.raises(FileNotFoundError, match="data.split_files"):
        VideoClipDataset(root, split="train", split_file=tmp_path / "absent.txt")
    listing.write_text("Other/mmaction2_part_0.mp4 one two\n")
    with pytest.raises(ValueError, match="list.txt:1: expected"):
        VideoClipDataset(root, split="train", split_file=listing)


@pytest.fixture
def mixed_folder(tmp_path, shared_videos):
    """Two good clips next to copies of every broken file."""
    real = shared_videos / "real"
    link_or_copy(
        real / "Wave" / "TrumanShow_wave_f_nm_np1_fr_med_26.avi", tmp_path / "good" / "a.avi"
    )
    link_or_copy(real / "Other" / "mmaction2_part_0.mp4", tmp_path / "good" / "b.mp4")
    (tmp_path / "bad_class").mkdir()
    for bad in sorted((shared_videos / "bad").iterdir()):
        if bad.suffix == ".mp4":
            shutil.copy(bad, tmp_path / "bad_class" / bad.name)
    return tmp_path


def test_bad_files_are_left_out_with_one_warning_naming_each(mixed_folder, recwarn):
    ds = VideoClipDataset(mixed_folder, clip_len=8, size=16)
    assert sorted(r.path for r in ds.records) == ["good/a.avi", "good/b.mp4"]
    messages = [str(w.message) for w in recwarn if "Left out" in str(w.message)]
    assert len(messages) == 1
    message = messages[0]
    for name, reason in [
        ("zero_bytes.mp4", "RuntimeError"),
        ("text_renamed.mp4", "RuntimeError"),
        ("truncated_30pct_moov_at_end.mp4", "RuntimeError"),
        ("truncated_30pct_moov_at_front.mp4", "DECORDError"),
        ("three_frames.mp4", "too short: 3 frames < 8"),
    ]:
        line = next(line for line in message.splitlines() if name in line)
        assert reason in line, line
    # the short clip is kept when the policy allows it
    looped = VideoClipDataset(mixed_folder, clip_len=8, size=16, short_video="loop")
    assert "bad_class/three_frames.mp4" in {r.path for r in looped.records}


def test_missing_and_empty_roots_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: set data.root") as missing:
        VideoClipDataset(tmp_path / "nowhere")
    assert "\n" not in str(missing.value) and str(tmp_path / "nowhere") in str(missing.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no videos here")
    with pytest.raises(FileNotFoundError, match="No video files"):
        VideoClipDataset(tmp_path / "empty")


def test_a_folder_of_only_broken_files_is_a_clear_error(tmp_path, shared_videos):
    for bad in ("zero_bytes.mp4", "text_renamed.mp4"):
        shutil.copy(shared_videos / "bad" / bad, tmp_path / bad)
    with pytest.raises(ValueError, match="No usable videos"):
        VideoClipDataset(tmp_path, clip_len=4)


def test_index_is_cached_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    for i in range(3):
        write_mp4(tmp_path / "v" / f"{i}.mp4", frame_index_video(20), fps=10, lossless=True)
    first = VideoClipDataset(tmp_path / "v", clip_len=4, size=16)
    calls = []
    real_probe = index_module.probe
    monkeypatch.setattr(index_module, "probe", lambda p: calls.append(p) or real_probe(p))
    again = VideoClipDataset(tmp_path / "v", clip_len=4, size=16)
    assert calls == [] and again.records == first.records  # served from the cache
    write_mp4(tmp_path / "v" / "3.mp4", frame_index_video(30), fps=10, lossless=True)
    grown = VideoClipDataset(tmp_path / "v", clip_len=4, size=16)
    assert len(calls) == 4 and len(grown) == 4


def test_a_file_that_breaks_after_indexing_is_logged_once_and_replaced(tmp_path, caplog):
    for i in range(3):
        write_mp4(tmp_path / "v" / f"{i}.mp4", frame_index_video(20), fps=10, lossless=True)
    ds = VideoClipDataset(tmp_path / "v", clip_len=4, size=16)
    (tmp_path / "v" / "0.mp4").write_bytes(b"broken now")
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="vdm.data.dataset"):
        samples = [ds[0] for _ in range(5)]
    assert all(s["video"].shape == (3, 4, 16, 16) for s in samples)
    skipped = [r for r in caplog.records if "Skipping unreadable video" in r.message]
    assert len(skipped) == 1 and "0.mp4" in skipped[0].message
    for i in range(3):
        (tmp_path / "v" / f"{i}.mp4").write_bytes(b"")
    with pytest.raises(RuntimeError, match="in a row failed to decode"):
        ds[1]


def test_worker_rng_streams_differ(shared_videos):
    """Clips come from the torch RNG, which Lightning seeds per rank and worker."""
    ds = VideoClipDataset(shared_videos / "real" / "Other", clip_len=4, size=16, augment=True)
    torch.manual_seed(1)
    a = ds[0]["video"]
    torch.manual_seed(2)
    b = ds[0]["video"]
    torch.manual_seed(1)
    assert torch.equal(ds[0]["video"], a) and not torch.equal(a, b)
    assert np.isfinite(a.numpy()).all()
