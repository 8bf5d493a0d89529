"""The moving-shapes set, checked on its files as decoded independently by PyAV."""

import hashlib
import json
import logging
import math
import re
from pathlib import Path

import av
import numpy as np
import pytest

from vdm.data import shapes
from vdm.data.shape_captions import describe_tracks, parse_caption
from vdm.data.shapes import (
    CLASSES,
    PALETTE,
    ShapesSpec,
    clip_rng,
    draw,
    generate,
    render_clip,
    sample_tracks,
)

SPEC = ShapesSpec(num_train=24, num_val=8, seed=3)
UNIT = SPEC.size / 32  # speeds are given per 32 px of frame
COLOURS = {rgb: name for name, rgb in PALETTE.items()}


def decode(path: Path) -> tuple[np.ndarray, float]:
    """Frames uint8 (T, H, W, 3) and the stream's average frame rate."""
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames), rate


def object_masks(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(T, H, W) mask of every palette colour present in the clip."""
    masks = {}
    for rgb, name in COLOURS.items():
        mask = (frames == rgb).all(axis=-1)
        if mask.any():
            masks[name] = mask
    return masks


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel rows/columns of a non-empty (H, W) mask, inclusive."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


def separated(masks: dict[str, np.ndarray], name: str, t: int, gap: int = 2) -> bool:
    """Whether object ``name`` is visible in frame t with every other object ``gap`` px away."""
    if not masks[name][t].any():
        return False
    top, bottom, left, right = bbox(masks[name][t])
    for other, mask in masks.items():
        if other == name or not mask[t].any():
            continue
        o_top, o_bottom, o_left, o_right = bbox(mask[t])
        if not (
            o_top > bottom + gap
            or o_bottom < top - gap
            or o_left > right + gap
            or o_right < left - gap
        ):
            return False
    return True


def classify(mask: np.ndarray) -> str:
    """Shape of one unoccluded object, from its fill of its bounding box and its symmetry."""
    top, bottom, left, right = bbox(mask)
    box = mask[top : bottom + 1, left : right + 1]
    if box.mean() > 0.92:  # a square fills its box; a disc ≈ π/4, a triangle ≈ 1/2
        return "square"
    half = len(box) // 2
    # Pointing up, a triangle holds about a third as many pixels in its top half as in its
    # bottom half; a disc is symmetric.
    return "triangle" if box[:half].sum() < 0.7 * box[-half:].sum() else "circle"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, generate(data_dir, SPEC)


@pytest.fixture(scope="module")
def clips(rendered: tuple[Path, Path]) -> dict[Path, tuple[np.ndarray, float]]:
    _, root = rendered
    return {path.relative_to(root): decode(path) for path in sorted(root.rglob("*.mp4"))}


def test_layout_and_file_names_are_exactly_as_specified(rendered):
    data_dir, root = rendered
    assert root == data_dir / "moving_shapes" / SPEC.digest()
    # Nothing else under moving_shapes: no staging folder was left behind.
    assert [p.name for p in (data_dir / "moving_shapes").iterdir()] == [SPEC.digest()]
    assert sorted(p.name for p in root.iterdir()) == [".complete", "train", "val"]
    for split, count in (("train", SPEC.num_train), ("val", SPEC.num_val)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(CLASSES)
        indices = []
        for path in (root / split).rglob("*"):
            if path.is_file():
                match = re.fullmatch(r"clip_(\d{5})\.(mp4|txt)", path.name)
                assert match, path
                indices.append(int(match.group(1)))
        # Each index of the split appears exactly twice (clip and caption), in one class folder.
        assert sorted(indices) == sorted(list(range(count)) * 2)
        for clip in (root / split).rglob("*.mp4"):
            assert clip.with_suffix(".txt").is_file(), clip
    marker = json.loads((root / ".complete").read_text())
    assert marker["spec"] == {
        "size": 32,
        "num_frames": 16,
        "fps": 8,
        "num_train": 24,
        "num_val": 8,
        "seed": 3,
    }


def test_frames_contain_only_black_and_one_or_two_distinct_palette_colours(clips):
    allowed = {(0, 0, 0), *PALETTE.values()}
    counts = set()
    for (frames, rate), path in zip(clips.values(), clips, strict=True):
        assert frames.shape == (SPEC.num_frames, SPEC.size, SPEC.size, 3), path
        assert rate == SPEC.fps
        present = {tuple(c) for c in np.unique(frames.reshape(-1, 3), axis=0)}
        assert present <= allowed, (path, present - allowed)
        counts.add(len(object_masks(frames)))
    assert counts == {1, 2}


def test_every_object_has_its_folders_class(clips):
    seen, checked, objects = set(), 0, 0
    for path, (frames, _) in clips.items():
        masks = object_masks(frames)
        for name in masks:
            objects += 1
            votes = [
                classify(masks[name][t]) for t in range(len(frames)) if separated(masks, name, t)
            ]
            # Two objects can travel together for the whole clip; skip those.
            if votes:
                # A majority: a one-pixel-wide sliver can fool the fill ratio in a rare frame.
                assert max(set(votes), key=votes.count) == path.parent.name, (path, name, votes)
                checked += 1
        seen.add(path.parent.name)
    assert seen == set(CLASSES)
    assert checked >= 0.8 * objects


def test_objects_have_the_specified_size(clips):
    # Area of a shape of radius / half side / circumradius r, divided by r².
    area_per_r2 = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}
    radii = []
    for path, (frames, _) in clips.items():
        masks = object_masks(frames)
        for name, mask in masks.items():
            areas = [mask[t].sum() for t in range(len(frames)) if separated(masks, name, t)]
            if not areas:
                continue
            radius = math.sqrt(np.median(areas) / area_per_r2[path.parent.name])
            # Rasterisation moves the area by about a perimeter's worth of half pixels.
            assert SPEC.size / 8 - 0.5 <= radius <= SPEC.size / 5 + 0.5, (path, name, radius)
            radii.append(radius)
    assert len(radii) >= 0.8 * SPEC.num_train
    # The range is covered, not just respected.
    assert min(radii) < SPEC.size * 0.14 and max(radii) > SPEC.size * 0.18


def test_objects_move_at_the_specified_speed(clips):
    # Farther than this from every wall in two frames, the object did not bounce in between.
    margin = math.ceil(2.5 * UNIT) + 2
    speeds = []
    for path, (frames, _) in clips.items():
        masks = object_masks(frames)
        for name, mask in masks.items():
            clear = []
            for t in range(len(frames)):
                if separated(masks, name, t):
                    top, bottom, left, right = bbox(mask[t])
                    walls = min(top, left, SPEC.size - 1 - bottom, SPEC.size - 1 - right)
                    clear.append(walls >= margin)
                else:
                    clear.append(False)
            centroids = [
                np.argwhere(mask[t]).mean(axis=0) if clear[t] else None for t in range(len(frames))
            ]
            # Speed over each run of >= 3 free steps: the centroid of a few rasterised pixels
            # wobbles by up to half a pixel, which a longer baseline averages out.
            t = 0
            while t < len(frames):
                end = t
                while end + 1 < len(frames) and clear[end + 1] and clear[t]:
                    end += 1
                if end - t >= 3:
                    speed = np.hypot(*(centroids[end] - centroids[t])) / (end - t)
                    assert (1 - 0.25) * UNIT <= speed <= (2.5 + 0.25) * UNIT, (path, name, speed)
                    speeds.append(speed)
                t = end + 1
    assert len(speeds) >= 10
    # The range is covered, not just respected.
    assert min(speeds) < 1.4 * UNIT and max(speeds) > 2.1 * UNIT


def test_first_frame_objects_are_fully_inside(clips):
    for path, (frames, _) in clips.items():
        masks = object_masks(frames)
        for name, mask in masks.items():
            if not separated(masks, name, 0):
                continue
            top, bottom, left, right = bbox(mask[0])
            height, width = bottom - top + 1, right - left + 1
            # Cut by a wall, a shape would lose its proportions.
            if path.parent.name == "triangle":
                # Circumradius R: base R·√3 wide, 1.5·R high.
                assert abs(width - height * 2 / math.sqrt(3)) <= 1.5, (path, name)
            else:
                assert abs(width - height) <= 1, (path, name)


def test_objects_stay_inside_the_frame_in_every_frame():
    """The geometry before rasterising: bounding extents within [0, size] at all times."""
    spec = ShapesSpec(size=40, num_frames=64)
    for seed in range(200):
        tracks, label = sample_tracks(np.random.default_rng(seed), spec)
        assert 1 <= len(tracks) <= 2
        assert len({track.colour for track in tracks}) == len(tracks)
        for track in tracks:
            assert track.shape == CLASSES[label]
            assert spec.size / 8 <= track.radius <= spec.size / 5
            left, right, top, bottom = shapes.extent(track.shape, track.radius)
            x, y = track.centres[:, 0], track.centres[:, 1]
            assert (x - left >= -1e-9).all() and (x + right <= spec.size + 1e-9).all()
            assert (y - top >= -1e-9).all() and (y + bottom <= spec.size + 1e-9).all()
            speed = np.hypot(*np.diff(track.centres, axis=0).T)
            # Constant speed away from walls: the largest step is the unbounced one.
            assert 1 * spec.size / 32 - 1e-9 <= speed.max() <= 2.5 * spec.size / 32 + 1e-9


def test_render_clip_is_deterministic_given_the_rng():
    first, label = render_clip(np.random.default_rng(7), SPEC)
    again, label_again = render_clip(np.random.default_rng(7), SPEC)
    other, _ = render_clip(np.random.default_rng(8), SPEC)
    assert first.dtype == np.uint8 and first.shape == (16, 32, 32, 3)
    assert label == label_again and label in range(3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def relative_bytes(root: Path) -> dict[tuple[str, str], bytes]:
    """(split, file name) -> file bytes, for every clip under a root."""
    return {(p.parts[-3], p.name): p.read_bytes() for p in root.rglob("*.mp4")}


def test_same_seed_gives_identical_files_and_another_seed_different_ones(rendered, tmp_path):
    _, root = rendered
    files = relative_bytes(root)
    assert relative_bytes(generate(tmp_path / "again", SPEC)) == files
    other = relative_bytes(generate(tmp_path / "other", ShapesSpec(num_train=24, num_val=8)))
    assert set(other) == set(files)
    assert all(other[key] != files[key] for key in files)
    # Train and val are different clips, not the same seeds twice.
    assert all(
        files["train", name] != files["val", name] for split, name in files if split == "val"
    )


def test_a_clip_does_not_depend_on_how_many_are_rendered(rendered, tmp_path):
    _, root = rendered
    small = ShapesSpec(num_train=5, num_val=2, seed=SPEC.seed)
    small_files = relative_bytes(generate(tmp_path, small))
    assert len(small_files) == 7
    assert all(data == relative_bytes(root)[key] for key, data in small_files.items())


def test_workers_render_the_same_files(rendered, tmp_path):
    _, root = rendered
    assert relative_bytes(generate(tmp_path, SPEC, num_workers=2)) == relative_bytes(root)


def test_rendering_logs_its_start_and_duration(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vdm.data.shapes"):
        generate(tmp_path, ShapesSpec(num_train=2, num_val=1))
        generate(tmp_path, ShapesSpec(num_train=2, num_val=1))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("Rendering moving shapes (2 train + 1 val clips")
    assert re.fullmatch(r"Rendered moving shapes in \d+\.\d s", messages[1])


def test_a_second_call_does_not_render_again(rendered, monkeypatch):
    data_dir, root = rendered

    def fail(*args: object) -> None:
        raise AssertionError("rendered again")

    monkeypatch.setattr(shapes, "render_clip", fail)
    assert generate(data_dir, SPEC) == root


def test_an_interrupted_render_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    real = shapes.render_clip
    calls = []

    def crash_midway(rng: np.random.Generator, spec: ShapesSpec) -> tuple[np.ndarray, int]:
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(rng, spec)

    monkeypatch.setattr(shapes, "render_clip", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, SPEC)
    assert list((tmp_path / "moving_shapes").iterdir()) == []
    # The next call starts over and finishes.
    monkeypatch.setattr(shapes, "render_clip", real)
    root = generate(tmp_path, SPEC)
    assert (root / ".complete").is_file()
    assert len(list(root.rglob("*.mp4"))) == SPEC.num_train + SPEC.num_val


def test_a_caller_that_finishes_second_keeps_the_first_set(rendered, tmp_path, monkeypatch, caplog):
    _, reference = rendered
    real = shapes.render_clip
    inner_root = []

    def race(rng: np.random.Generator, spec: ShapesSpec) -> tuple[np.ndarray, int]:
        if not inner_root:
            # Another caller renders and publishes the whole set while this one is still going.
            monkeypatch.setattr(shapes, "render_clip", real)
            inner_root.append(generate(tmp_path, SPEC))
            inner_root.append((inner_root[0] / ".complete").stat().st_ino)
            monkeypatch.setattr(shapes, "render_clip", race)
        return real(rng, spec)

    monkeypatch.setattr(shapes, "render_clip", race)
    with caplog.at_level(logging.INFO, logger="vdm.data.shapes"):
        root = generate(tmp_path, SPEC)
    assert "rendered meanwhile by another process" in caplog.text
    assert root == inner_root[0]
    assert (root / ".complete").stat().st_ino == inner_root[1]  # the first set was kept
    assert [p.name for p in (tmp_path / "moving_shapes").iterdir()] == [SPEC.digest()]
    assert relative_bytes(root) == relative_bytes(reference)


def test_the_digest_is_stable_and_follows_every_field():
    # Pinned: a changed digest silently orphans every rendered set; bump FORMAT_VERSION instead.
    assert ShapesSpec().digest() == "5d7839039501"
    digests = {
        ShapesSpec().digest(),
        ShapesSpec(size=48).digest(),
        ShapesSpec(num_frames=8).digest(),
        ShapesSpec(fps=4).digest(),
        ShapesSpec(num_train=10).digest(),
        ShapesSpec(num_val=10).digest(),
        ShapesSpec(seed=1).digest(),
    }
    assert len(digests) == 7
    assert all(re.fullmatch(r"[0-9a-f]{12}", d) for d in digests)


def test_a_bad_spec_is_refused_in_one_line():
    with pytest.raises(ValueError, match="size >= 8"):
        ShapesSpec(size=4)
    with pytest.raises(ValueError, match="num_train"):
        ShapesSpec(num_train=-1)


def test_every_caption_states_what_was_rendered(rendered, clips):
    """Each clip_XXXXX.txt is one UTF-8 line whose facts are those of the clip's tracks, and
    whose colours and shape are those seen in its decoded frames."""
    _, root = rendered
    texts = sorted(root.rglob("*.txt"))
    assert len(texts) == SPEC.num_train + SPEC.num_val
    phrasings = set()
    for path in texts:
        raw = path.read_bytes().decode("utf-8")
        assert raw.endswith("\n") and raw.count("\n") == 1, path
        split, index = path.parts[-3], int(path.stem[len("clip_") :])
        tracks, _ = sample_tracks(clip_rng(SPEC, split, index), SPEC)
        parsed = parse_caption(raw)
        assert sorted(parsed, key=repr) == sorted(describe_tracks(tracks, SPEC.size), key=repr)
        frames, _ = clips[path.relative_to(root).with_suffix(".mp4")]
        assert {d.colour for d in parsed} == set(object_masks(frames)), path
        assert {d.shape for d in parsed} == {path.parts[-2]}, path
        phrasings.add(raw.split()[0] + raw.split()[1])  # "there is", "two circles:", "a large"
    assert len(phrasings) > 3  # the phrasing varies from clip to clip


# sha256 (first 16 hex digits) of the frames of a few clips of SPEC, as rendered before clips
# had captions (FORMAT_VERSION 1): captions must not change a single pixel.
FRAMES_BEFORE_CAPTIONS = {
    ("train", 0): "6a80780e66448717",
    ("train", 1): "d95641c9e6a3bc5c",
    ("val", 7): "004f522bc408620a",
}


def test_captions_leave_the_frames_as_they_were(rendered, clips):
    _, root = rendered
    for (split, index), digest in FRAMES_BEFORE_CAPTIONS.items():
        (path,) = root.glob(f"{split}/*/clip_{index:05d}.mp4")
        frames, _ = clips[path.relative_to(root)]
        assert hashlib.sha256(frames.tobytes()).hexdigest()[:16] == digest
    for path, (frames, _) in clips.items():
        split, index = path.parts[0], int(path.stem[len("clip_") :])
        tracks, _ = sample_tracks(clip_rng(SPEC, split, index), SPEC)
        np.testing.assert_array_equal(frames, draw(tracks, SPEC))
