"""The latent cache: each clip encoded once, found again by its content key, resumed after a
kill, refused when damaged, shared by ranks."""

import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import frame_index_video

from vdm.autoencoders import Autoencoder
from vdm.data.dataset import VideoClipDataset
from vdm.data.latent_cache import LatentClipDataset, shard_path
from vdm.errors import DataError
from vdm.files.video import write_mp4
from vdm.training import latent_cache
from vdm.training.latent_cache import build_latent_cache, cached_training_set


class Pooling(Autoencoder):
    """A stand-in autoencoder: 2×2 average pooling, std 0.1; counts the clips it encodes."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(torch.nn.Linear(1, 1), 3, 2, 1, False, 0.0, 1.0,
                         {"kind": "test", "class": "Pooling", "sha256": str(weight)})  # fmt: skip
        self.weight, self.encoded = weight, 0

    def raw_posterior(self, video):
        self.encoded += len(video)
        b, c, t, h, w = video.shape
        pooled = F.avg_pool2d(video.transpose(1, 2).reshape(b * t, c, h, w), 2) * self.weight
        mean = pooled.view(b, t, c, h // 2, w // 2).transpose(1, 2)
        return mean, torch.full_like(mean, 0.1)


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    for i, label in enumerate(["a", "a", "b", "b", "b"]):
        frames = frame_index_video(12 + i, 16, 16)
        write_mp4(root / label / f"clip{i}.mp4", frames, fps=10, lossless=True)
    return root


def dataset(root, **options):
    defaults = dict(clip_len=4, size=8, split=None, augment=True, cache_dir=root.parent / "index",
                    index_workers=1, seed=0)  # fmt: skip
    return VideoClipDataset(root, **{**defaults, **options})


def test_clips_are_encoded_once_and_read_back_as_encoded(videos, tmp_path):
    ae = Pooling()
    data = dataset(videos)
    folder = build_latent_cache(
        data, ae, windows=2, shard_size=3, batch_size=2, root=tmp_path / "c"
    )
    assert ae.encoded == 10  # 5 videos × 2 windows
    assert build_latent_cache(data, ae, windows=2, shard_size=3, root=tmp_path / "c") == folder
    assert ae.encoded == 10  # the second run encoded nothing
    cached = LatentClipDataset(folder)
    assert len(cached) == 10 and len(list(folder.glob("shard-*.pt"))) == 4
    for k in (0, 5, 9):  # item k: window k % 2 of video k // 2
        clip = data[(k // 2, k % 2)]
        expected = F.avg_pool2d(clip["video"].transpose(0, 1), 2).transpose(0, 1)
        item = cached[(k, 7)]  # the epoch in the key does not matter
        torch.testing.assert_close(item["latents_mean"], expected, atol=1e-3, rtol=1e-3)  # float16
        assert torch.equal(
            item["latents_std"], torch.full_like(expected, 0.1, dtype=torch.float16).float()
        )
        assert int(item["label"]) == int(clip["label"]) and float(item["fps"]) == float(clip["fps"])


CHANGED = {"clip_len": 5, "frame_stride": 2, "size": 16, "seed": 1, "augment": False,
           "short_video": "loop"}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    ["weights", "clip_len", "frame_stride", "size", "windows", "seed", "augment", "short_video",
     "file", "split"],
)  # fmt: skip
def test_every_key_part_changed_gives_a_new_cache(videos, tmp_path, change):
    base = build_latent_cache(dataset(videos), Pooling(), root=tmp_path / "c")
    ae, options, windows = Pooling(), {}, 1
    if change == "weights":
        ae = Pooling(weight=2.0)
    elif change == "windows":
        windows = 2
    elif change == "file":  # a re-encoded file: same name, other bytes
        path = videos / "a" / "clip0.mp4"
        noise = torch.randint(0, 256, (12, 16, 16, 3), dtype=torch.uint8).numpy()
        write_mp4(path, noise, fps=10, lossless=True)
    elif change == "split":
        split = tmp_path / "train.txt"
        split.write_text("a/clip0.mp4\nb/clip2.mp4\n")
        options = {"split": "train", "split_file": split}
    else:
        options = {change: CHANGED[change]}
    other = build_latent_cache(dataset(videos, **options), ae, windows=windows, root=tmp_path / "c")
    assert other != base


def test_a_killed_build_resumes_with_the_shards_it_lacks(videos, tmp_path, monkeypatch):
    ae = Pooling()
    data = dataset(videos)
    save = latent_cache.save_shard
    written = []

    def killed_after_two(path, shard):
        if len(written) == 2:
            raise KeyboardInterrupt  # the job was killed here
        written.append(path.name)
        save(path, shard)

    monkeypatch.setattr(latent_cache, "save_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_latent_cache(data, ae, shard_size=2, root=tmp_path / "c")
    monkeypatch.setattr(latent_cache, "save_shard", save)
    assert ae.encoded == 5  # two shards of 2 written, the third (1 clip) encoded, not saved
    folder = build_latent_cache(data, ae, shard_size=2, root=tmp_path / "c")
    assert ae.encoded == 5 + 1  # only the last shard was left to encode
    assert len(LatentClipDataset(folder)) == 5


def test_a_damaged_or_missing_shard_is_one_line_naming_it(videos, tmp_path):
    folder = build_latent_cache(dataset(videos), Pooling(), shard_size=2, root=tmp_path / "c")
    shard = shard_path(folder, 1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cached = LatentClipDataset(folder)
    cached[0]  # shard 0 is whole
    with pytest.raises(
        DataError, match=rf"shard {shard} does not match the SHA-256 .* delete the folder"
    ):
        cached[2]
    shard.unlink()
    with pytest.raises(DataError, match=rf"shard {shard} is missing"):
        LatentClipDataset(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(DataError, match="no finished latent cache"):
        LatentClipDataset(folder)


def test_two_ranks_share_the_work_and_one_cache(videos, tmp_path):
    data = dataset(videos)
    encoders = [Pooling(), Pooling()]
    barrier = threading.Barrier(2, timeout=60)
    folders, errors = {}, []

    def rank(r):
        try:
            folders[r] = build_latent_cache(data, encoders[r], shard_size=1, root=tmp_path / "c",
                                            rank=r, world_size=2, barrier=barrier.wait)  # fmt: skip
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert folders[0] == folders[1]
    assert [e.encoded for e in encoders] == [3, 2]  # shards 0, 2, 4 and 1, 3: each once
    assert len(LatentClipDataset(folders[0])) == 5


@pytest.fixture
def captioned(tmp_path):
    """Three lossless 16×24 videos, brighter to the right (a flip shows), with captions."""
    root = tmp_path / "captioned"
    row = torch.arange(24, dtype=torch.uint8) * 10
    frames = row.view(1, 1, 24, 1).expand(10, 16, 24, 3).contiguous().numpy()
    for name in ("a", "b", "c"):
        write_mp4(root / f"{name}.mp4", frames, fps=10, lossless=True)
        (root / f"{name}.txt").write_text(f"{name} goes left, not right")
    return root


def test_cached_items_carry_the_captions_of_their_windows(captioned, tmp_path):
    data = dataset(captioned, size=16)
    options = {"windows": 4, "shard_size": 5, "root": tmp_path / "c"}
    cached = cached_training_set(data, autoencoder=Pooling(), options=options)
    assert len(cached) == 12
    mirrored = set()
    for k in range(12):
        item = cached[(k, 3)]
        # The cached latents show the flip: pooling keeps the gradient's direction.
        latents = item["latents_mean"]
        flipped = bool(latents[..., 0].mean() > latents[..., -1].mean())
        name = "abc"[k // 4]
        expected = f"{name} goes right, not left" if flipped else f"{name} goes left, not right"
        assert item["caption"] == expected == data[(k // 4, k % 4)]["caption"]
        mirrored.add(flipped)
    assert mirrored == {True, False}


def test_captions_are_read_anew_and_never_part_of_the_cache(captioned, tmp_path):
    ae, options = Pooling(), {"windows": 2, "root": tmp_path / "c"}
    first = cached_training_set(dataset(captioned, size=16), autoencoder=ae, options=options)
    for name in ("a", "b", "c"):
        (captioned / f"{name}.txt").write_text("rewritten upwards")
    again = cached_training_set(dataset(captioned, size=16), autoencoder=ae, options=options)
    assert again.folder == first.folder and ae.encoded == 6  # found, not encoded again
    assert [again[k]["caption"] for k in range(6)] == ["rewritten upwards"] * 6
    shard = torch.load(shard_path(again.folder, 0), weights_only=True)
    assert set(shard) == {"mean", "std", "label", "fps"}
    for name in ("a", "b", "c"):
        (captioned / f"{name}.txt").unlink()
    plain = cached_training_set(dataset(captioned, size=16), autoencoder=ae, options=options)
    assert plain.folder == first.folder and "caption" not in plain[0]
    with pytest.raises(DataError, match="2 captions for the 6 clips cached in"):
        LatentClipDataset(first.folder, captions=["x", "y"])
