"""Prediction, interpolation and long videos from a checkpoint trained with frame masks:
python -m vdm.sample and vdm.evaluate with task=..., and the training run's prediction grid."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import compose_config, frame_index_video

from vdm.cli.evaluate import run as evaluate
from vdm.cli.sample import run as sample
from vdm.data.dataset import read_video_start
from vdm.diffusion.samplers import DDIMSampler
from vdm.evaluation.tasks import evaluate_context_task
from vdm.files.video import write_mp4
from vdm.inference import load_run
from vdm.inference.generation import sample_long_videos


def moving_square(frames: int = 16, size: int = 32) -> np.ndarray:
    """uint8 (T, size, size, 3): a red square moving one pixel a frame on black."""
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for i in range(frames):
        video[i, 10:18, 4 + i : 12 + i, 0] = 255
    return video


@pytest.fixture(scope="module")
def square_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("context") / "square.mp4"
    return write_mp4(path, moving_square(), fps=8, lossless=True)


def run_sample(ckpt: Path, out: Path, *overrides: str) -> Path:
    return sample(compose_config("sample", f"ckpt_path={ckpt}", f"out_dir={out}", *overrides))


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_the_start_of_a_video_is_decoded_as_validation_clips_are(tmp_path):
    """Frames every ``stride`` from the first, at native size exactly the file's pixels;
    resized short side first, then centre-cropped."""
    path = write_mp4(tmp_path / "square.mp4", moving_square(), fps=8, lossless=True)
    frames = read_video_start(path, size=32, frame_stride=2, max_frames=5)
    np.testing.assert_array_equal(frames, moving_square()[::2][:5])
    wide = write_mp4(tmp_path / "wide.mp4", frame_index_video(6, 24, 48), fps=8, lossless=True)
    assert read_video_start(wide, size=16).shape == (6, 16, 16, 3)


def test_predict_gives_the_first_frames_and_shows_given_generated_real(
    context_ckpt, square_video, tmp_path
):
    out = run_sample(
        context_ckpt, tmp_path, "task=predict", f"context.video={square_video}",
        "context.frames=3", "num_samples=2", "sampler.steps=3",
    )  # fmt: skip
    saved = np.load(out / "samples.npz")
    videos, mask = saved["videos"], saved["context_mask"]
    assert videos.shape == (2, 8, 32, 32, 3)
    assert mask.tolist() == [True] * 3 + [False] * 5
    real = read_video_start(square_video, 32, 1, 8)
    for clip in videos:  # the given frames come back exactly as decoded
        np.testing.assert_array_equal(clip[:3], real[:3])
    shown = decoded(out / "sample_0000.mp4")
    assert shown.shape == (8, 128, 3 * 128 + 2 * 4, 3)  # given | generated | real, ×4 upscaled


def test_interpolate_gives_both_ends(context_ckpt, square_video, tmp_path):
    out = run_sample(
        context_ckpt, tmp_path, "task=interpolate", f"context.video={square_video}",
        "context.frames=2", "num_samples=1", "sampler=dpmpp", "sampler.steps=3",
    )  # fmt: skip
    saved = np.load(out / "samples.npz")
    assert saved["context_mask"].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    real = read_video_start(square_video, 32, 1, 8)
    np.testing.assert_array_equal(saved["videos"][0][[0, 1, 6, 7]], real[[0, 1, 6, 7]])


@pytest.mark.parametrize("with_video", [True, False])
def test_extend_samples_long_videos_window_by_window(
    context_ckpt, square_video, tmp_path, with_video
):
    video = [f"context.video={square_video}"] if with_video else []
    out = run_sample(
        context_ckpt, tmp_path, "task=extend", "frames=20", "context.frames=4", *video,
        "num_samples=2", "sampler.steps=2",
    )  # fmt: skip
    saved = np.load(out / "samples.npz")
    assert saved["videos"].shape == (2, 20, 32, 32, 3)
    assert saved["context_mask"].sum() == (4 if with_video else 0)
    if with_video:
        real = read_video_start(square_video, 32, 1, 4)
        np.testing.assert_array_equal(saved["videos"][:, :4], np.stack([real, real]))


def test_long_videos_continue_each_samples_own_opening(context_ckpt):
    """Openings of shape (N, C, k, H, W): sample i starts with opening i, bit for bit."""
    module = load_run(context_ckpt).model
    openings = torch.rand(3, 3, 4, 32, 32) * 2 - 1
    videos = sample_long_videos(
        module, DDIMSampler(steps=2), (3, 32, 32), 12, 8, 4, openings, None, 3, batch_size=2
    )
    assert videos.shape == (3, 3, 12, 32, 32)
    torch.testing.assert_close(videos[:, :, :4], openings, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=forecast"], "Unknown task=forecast"),
        (["task=predict"], "needs context.video"),
        (["task=predict", "context.frames=8", "CONTEXT"], "context.frames=8"),
        (["task=interpolate", "context.frames=4", "CONTEXT"], "context.frames=4"),
        (["task=interpolate", "frames=24", "CONTEXT"], "fewer than the 24"),
        (["task=extend"], "needs frames=N"),
    ],
)
def test_bad_task_input_is_one_clear_line(context_ckpt, square_video, tmp_path, overrides, message):
    overrides = [f"context.video={square_video}" if o == "CONTEXT" else o for o in overrides]
    with pytest.raises(ValueError, match=message) as caught:
        run_sample(context_ckpt, tmp_path, *overrides)
    assert "\n" not in str(caught.value)


def test_a_context_video_shorter_than_the_given_frames_is_refused(context_ckpt, tmp_path):
    short = write_mp4(tmp_path / "short.mp4", moving_square(2), fps=8, lossless=True)
    with pytest.raises(ValueError, match="has 2 frames"):
        run_sample(context_ckpt, tmp_path, "task=predict", f"context.video={short}")
    with pytest.raises(ValueError, match="has 2 frames"):
        run_sample(context_ckpt, tmp_path, "task=extend", "frames=12", f"context.video={short}")


def test_tasks_need_a_checkpoint_trained_with_masks(conditional_ckpt, square_video, tmp_path):
    with pytest.raises(ValueError, match="context=mixed"):
        run_sample(conditional_ckpt, tmp_path, "task=predict", f"context.video={square_video}")


@pytest.mark.parametrize(("task", "frames"), [("predict", 4), ("interpolate", 2)])
def test_evaluate_scores_the_task_beside_its_baselines(context_ckpt, tmp_path, task, frames):
    out = tmp_path / "report.json"
    cfg = compose_config(
        "evaluate", f"ckpt_path={context_ckpt}", f"task={task}", f"context.frames={frames}",
        "num_samples=2", "num_clips=3", "sampler.steps=2", f"out={out}", "batch_size=4",
    )  # fmt: skip
    report = evaluate(cfg)
    assert json.loads(out.read_text()) == report
    metrics, protocol = report["metrics"], report["protocol"]
    assert protocol["task"] == task and protocol["num_clips"] == 3
    assert protocol["samples_per_clip"] == 2 and protocol["context_frames"] == frames
    for name in ("model", "unconditional", "baseline"):
        for metric in ("psnr", "ssim"):
            value = metrics[name][metric]
            assert value["best"] >= value["mean"] - 1e-6, (name, metric)
    baseline = metrics["baseline"]["psnr"]
    assert baseline["best"] == baseline["mean"]  # one deterministic guess per clip
    assert "fvd" not in metrics  # no extractor given


def test_the_training_run_writes_a_prediction_grid(context_ckpt):
    predict = context_ckpt.parents[1] / "samples" / "step_000002" / "predict"
    grid = decoded(predict / "grid.gif")
    first = decoded(predict / "sample_0000.mp4")
    assert first.shape[:2] == (8, 32 * 4) and first.shape[2] == (3 * 32 + 2) * 4
    assert grid.shape[0] == 8


def test_evaluate_adds_fvd_of_the_completed_clips_when_an_extractor_is_given(
    context_ckpt, tmp_path
):
    import torch
    from test_evaluate import FEATURES, ClipStatistics

    extractor = tmp_path / "stats.pt"
    torch.jit.script(ClipStatistics()).save(str(extractor))
    cfg = compose_config(
        "evaluate", f"ckpt_path={context_ckpt}", "task=predict", "context.frames=4",
        "num_samples=2", "num_clips=3", "sampler.steps=2", f"out={tmp_path / 'r.json'}",
        f"fvd.extractor={extractor}", f"fvd.feature_dim={FEATURES}",
    )  # fmt: skip
    report = evaluate(cfg)
    assert report["metrics"]["fvd"] is None or report["metrics"]["fvd"] >= 0
    assert report["protocol"]["extractor"]["feature_dim"] == FEATURES


def test_scoring_without_the_unconditional_samples_keeps_the_models_scores(context_ckpt):
    """The unconditional samples are an extra pass: leaving them out changes no other number."""
    module = load_run(context_ckpt).model
    clips = torch.rand(2, 3, 8, 32, 32) * 2 - 1

    def run(unconditional: bool) -> dict:
        return evaluate_context_task(
            module, DDIMSampler(steps=2), "predict", [{"video": clips}], 4, 2, 4,
            unconditional=unconditional,
        )  # fmt: skip

    both, without = run(True), run(False)
    assert "unconditional" in both and "unconditional" not in without
    assert without["model"] == both["model"] and without["baseline"] == both["baseline"]
