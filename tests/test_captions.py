"""Captions: the shapes captions and their parser, caption files, and captions in the dataset."""

import json
import logging
import re
from collections import Counter

import numpy as np
import pytest
from conftest import link_or_copy

from vdm.data.captions import mirror_caption, read_caption_file
from vdm.data.dataset import VideoClipDataset
from vdm.data.shape_captions import (
    TEMPLATES,
    ShapeDescription,
    caption,
    describe_tracks,
    direction_of,
    parse_caption,
)
from vdm.data.shapes import CLASSES, PALETTE, ShapeTrack
from vdm.errors import UserError
from vdm.files.video import write_mp4


def track(dx: float, dy: float, radius: float = 5.0) -> ShapeTrack:
    """A red circle at (16, 16) that moves by (dx, dy) in its first frame."""
    return ShapeTrack("circle", "red", radius, np.array([[16.0, 16.0], [16.0 + dx, 16.0 + dy]]))


@pytest.mark.parametrize(
    ("dx", "dy", "direction"),
    [(3, -1, "right"), (0.5, -2, "up"), (-2, 1.5, "left"), (1, 2, "down"), (-1, -1, "left")],
)
def test_the_direction_is_the_larger_component_of_the_first_step(dx, dy, direction):
    # Image y grows downwards, so dy < 0 is "up"; on a tie x wins.
    assert describe_tracks([track(dx, dy)], 32)[0].direction == direction
    assert direction_of(dx, dy) == direction


def test_the_size_is_small_below_the_middle_of_the_radius_range():
    # At 32 px the radius range is [4, 6.4]: its middle is 5.2 px.
    assert describe_tracks([track(1, 0, radius=5.1)], 32)[0].size == "small"
    assert describe_tracks([track(1, 0, radius=5.3)], 32)[0].size == "large"


def random_clip(rng: np.random.Generator, mixed: bool = False) -> list[ShapeDescription]:
    """1 to 3 objects of distinct colours, one shape (as a shapes clip) or mixed."""
    count = int(rng.integers(1, 4))
    colours = rng.choice(list(PALETTE), size=count, replace=False)
    shape = str(rng.choice(CLASSES))
    return [
        ShapeDescription(
            str(rng.choice(CLASSES)) if mixed else shape,
            str(colour),
            str(rng.choice(["small", "large"])),
            str(rng.choice(["left", "right", "up", "down"])),
        )
        for colour in colours
    ]


@pytest.mark.parametrize("template", [*TEMPLATES, None])
def test_every_phrasing_parses_back_to_its_facts(template):
    rng = np.random.default_rng(0)
    texts = set()
    for _ in range(300):
        clip = random_clip(rng, mixed=rng.random() < 0.3)
        text = caption(clip, rng, template=template)
        assert Counter(parse_caption(text)) == Counter(clip), text
        texts.add(text)
    assert len(texts) > 250  # verbs, wordings and order vary


# What each phrasing reads like, for a large red circle going left (R) and a small blue circle
# going up (B), in either order.
VERB, VERBING = r"(moves|goes|travels|heads|drifts)", r"(moving|going|travelling|heading|drifting)"
R, B = r"(left|to the left)", r"(up|upwards)"
PHRASINGS = {
    "moves": (rf"a large red circle {VERB} {R} and a small blue circle {VERB} {B}",
              rf"a small blue circle {VERB} {B} and a large red circle {VERB} {R}"),
    "header": (rf"two circles: a large red one {VERBING} {R} and a small blue one {VERBING} {B}",
               rf"two circles: a small blue one {VERBING} {B} and a large red one {VERBING} {R}"),
    "drifting": (rf"a large red circle {VERBING} {R}, and a small blue circle {VERBING} {B}",
                 rf"a small blue circle {VERBING} {B}, and a large red circle {VERBING} {R}"),
    "there_is": (rf"there is a large red circle that {VERB} {R} and a small blue circle that "
                 rf"{VERB} {B}", rf"there is a small blue circle that {VERB} {B} and a large red "
                 rf"circle that {VERB} {R}"),
}  # fmt: skip


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_phrasings_read_as_documented(template):
    red = ShapeDescription("circle", "red", "large", "left")
    blue = ShapeDescription("circle", "blue", "small", "up")
    rng = np.random.default_rng(1)
    texts = {caption([red, blue], rng, template=template) for _ in range(200)}
    red_first, blue_first = PHRASINGS[template]
    assert all(re.fullmatch(red_first, t) or re.fullmatch(blue_first, t) for t in texts), texts
    assert any(re.fullmatch(red_first, t) for t in texts)  # both orders occur
    assert any(re.fullmatch(blue_first, t) for t in texts)
    assert len(texts) > 50  # verbs and wordings vary


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red square moves right", [("square", "red", None, "right")]),
        ("a blue triangle", [("triangle", "blue", None, None)]),
        ("two green circles moving down", [("circle", "green", None, "down")] * 2),
        ("A BIG Yellow square heading to the LEFT", [("square", "yellow", "large", "left")]),
        ("a red square and a small blue one", [("square", "red", None, None),
                                              ("square", "blue", "small", None)]),
        ("circles: a cyan one going upwards", [("circle", "cyan", None, "up")]),
        ("", []),
        ("nothing to see here", []),
    ],
)  # fmt: skip
def test_simple_prompts_parse_with_unstated_facts_as_none(prompt, expected):
    assert parse_caption(prompt) == [ShapeDescription(*facts) for facts in expected]


def test_mirror_caption_swaps_whole_words_and_keeps_their_case():
    assert mirror_caption("a red circle moves left; Right, LEFT.") == (
        "a red circle moves right; Left, RIGHT."
    )
    assert mirror_caption("leftover upright rightmost") == "leftover upright rightmost"
    assert mirror_caption(mirror_caption("left then right")) == "left then right"


# A caption file in every format; b.mp4 given as an absolute path in each.
FORMATS = {
    "caps.csv": 'path,caption\na.mp4,"a dog, running left"\n{root}/b.mp4,a cat\n',
    "caps_opensora.csv": 'path,text,num_frames\na.mp4,"a dog, running left",8\n'
    "{root}/b.mp4,a cat,8\n",
    "caps.jsonl": '{{"path": "a.mp4", "caption": "a dog, running left"}}\n\n'
    '{{"path": "{root}/b.mp4", "caption": "a cat"}}\n',
    "caps.json": '[{{"path": "./a.mp4", "caption": "a dog,\\n running left"}},\n'
    ' {{"path": "{root}/b.mp4", "caption": "a cat"}}]\n',
}


@pytest.mark.parametrize("name", FORMATS)
def test_caption_files_of_each_format_give_the_same_captions(tmp_path, videos, name):
    path = tmp_path / name
    path.write_text(FORMATS[name].format(root=videos))
    read = read_caption_file(path)
    assert sorted(read.values()) == ["a cat", "a dog, running left"]
    ds = VideoClipDataset(videos, clip_len=4, size=16, captions=path)
    assert [ds[i]["caption"] for i in range(3)] == ["a dog, running left", "a cat", ""]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("caps.csv", "path,text2\na.mp4,x\n", r"caps.csv:1: the header path,text2 lacks"),
        ("caps.csv", "path,caption\na.mp4\n", r"caps.csv:2: fewer fields"),
        ("caps.csv", "path,caption\n", r"caps.csv lists no captions"),
        ("caps.jsonl", '{"path": "a.mp4", "caption": "x"}\n\n{"path": \n',
         r"caps.jsonl:3: not JSON"),
        ("caps.jsonl", '{"path": "a.mp4", "caption": "x"}\n{"path": "b.mp4"}\n',
         r"caps.jsonl:2: expected an object with 'path' and 'caption'"),
        ("caps.json", '[{"path": "a.mp4", "caption": 3}]', r"caps.json: item 1: 'path' and"),
        ("caps.tsv", "path\tcaption\n", r"caps.tsv: unknown format '.tsv'"),
    ],
)  # fmt: skip
def test_a_malformed_caption_file_is_one_line_naming_it(tmp_path, videos, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=match) as error:
        VideoClipDataset(videos, clip_len=4, size=16, captions=tmp_path / name)
    assert "\n" not in str(error.value)


def test_a_missing_caption_file_or_policy_is_one_line_naming_the_key(tmp_path, videos):
    with pytest.raises(FileNotFoundError, match="nowhere.csv does not exist: set data.captions"):
        VideoClipDataset(videos, clip_len=4, size=16, captions=tmp_path / "nowhere.csv")
    with pytest.raises(UserError, match="data.missing_caption='drop': use 'empty'.* or 'skip'"):
        VideoClipDataset(videos, clip_len=4, size=16, missing_caption="drop")


@pytest.fixture
def videos(tmp_path):
    """Three flat lossless videos (a, b, c.mp4), 16×24 px, brighter to the right."""
    root = tmp_path / "videos"
    for name in ("a", "b", "c"):
        write_mp4(root / f"{name}.mp4", gradient_video(), fps=10, lossless=True)
    return root


def gradient_video(num_frames: int = 8) -> np.ndarray:
    """uint8 (T, 16, 24, 3) whose value grows by 10 per column, left to right."""
    row = (np.arange(24) * 10).astype(np.uint8)
    return np.broadcast_to(row[None, None, :, None], (num_frames, 16, 24, 3)).copy()


def test_a_txt_beside_a_video_is_its_caption_and_no_captions_means_no_key(videos):
    plain = VideoClipDataset(videos, clip_len=4, size=16)
    assert plain.captions is None and "caption" not in plain[0]
    (videos / "a.txt").write_text("a dog\nrunning\n", encoding="utf-8")
    (videos / "b.txt").write_text("un café ☕", encoding="utf-8")
    (videos / "c.txt").write_text("a cat", encoding="utf-8")
    ds = VideoClipDataset(videos, clip_len=4, size=16, augment=False)
    assert [ds[i]["caption"] for i in range(3)] == ["a dog running", "un café ☕", "a cat"]


@pytest.mark.parametrize("policy", ["empty", "skip"])
def test_videos_without_a_caption_follow_the_policy_with_one_warning(videos, caplog, policy):
    (videos / "b.txt").write_text("a cat")
    with caplog.at_level(logging.WARNING):
        ds = VideoClipDataset(videos, clip_len=4, size=16, missing_caption=policy)
    warnings = [r.getMessage() for r in caplog.records if "no caption" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("2 of 3 video(s)") and "a.mp4, c.mp4" in warnings[0]
    if policy == "empty":
        assert [ds[i]["caption"] for i in range(3)] == ["", "a cat", ""]
        assert 'trained with the caption ""' in warnings[0]
    else:
        assert [r.path for r in ds.records] == ["b.mp4"] and ds[0]["caption"] == "a cat"
        assert "left out (data.missing_caption=skip)" in warnings[0]


def test_caption_rows_naming_absent_videos_are_one_warning(tmp_path, videos, caplog):
    rows = [("a.mp4", "x"), ("gone.mp4", "y"), ("b.mp4", "z"), ("c.mp4", "w")]
    rows += [(f"/elsewhere/{i}.mp4", "v") for i in range(4)]
    path = tmp_path / "caps.jsonl"
    path.write_text("".join(json.dumps({"path": p, "caption": c}) + "\n" for p, c in rows))
    with caplog.at_level(logging.WARNING):
        ds = VideoClipDataset(videos, clip_len=4, size=16, captions=path)
    warnings = [r.getMessage() for r in caplog.records if "name no video" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"5 caption(s) in {path} name no video under {videos}")
    assert "gone.mp4, /elsewhere/0.mp4, /elsewhere/1.mp4, ..." in warnings[0]
    assert len(ds) == 3


def is_mirrored(video) -> bool:
    """Whether a (C, T, H, W) clip of :func:`gradient_video` is flipped: darker to the right."""
    return bool(video[:, :, :, 0].mean() > video[:, :, :, -1].mean())


def test_a_flipped_clip_has_left_and_right_swapped_in_its_caption(videos):
    (videos / "a.txt").write_text("a red circle moves Left, then right")
    ds = VideoClipDataset(videos, clip_len=4, size=16, augment=True)
    seen = set()
    for epoch in range(12):
        sample = ds[(0, epoch)]
        mirrored = is_mirrored(sample["video"])
        expected = "a red circle moves Right, then left" if mirrored else ds.captions[0]
        assert sample["caption"] == expected == ds.caption(0, epoch)
        assert ds.flipped(0, epoch) == mirrored
        seen.add(mirrored)
    assert seen == {True, False}
    assert not VideoClipDataset(videos, clip_len=4, size=16, augment=False).flipped(0, 0)


def test_the_flip_is_known_without_decoding_for_resized_real_videos(tmp_path, shared_videos):
    """Decoded at another size than their own (240×320 → 21×16, 240×432 → 16×29)."""
    real = shared_videos / "real"
    for name in ("Other/mmaction2_test.avi", "Wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi"):
        video = link_or_copy(real / name, tmp_path / "v" / name.split("/")[1])
        video.with_suffix(".txt").write_text("waving to the left")
    ds = VideoClipDataset(tmp_path / "v", clip_len=4, size=16, augment=True, seed=3)
    for index in range(2):
        for epoch in range(6):
            mirrored = ds[(index, epoch)]["caption"] == "waving to the right"
            assert ds.flipped(index, epoch) == mirrored
