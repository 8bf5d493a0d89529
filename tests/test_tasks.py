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
from vdm.diffusion.context import task_mask
from vdm.diffusion.samplers import DDIMSampler
from vdm.evaluation.real_clips import real_batches, real_data_config
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


def rerun_the_evaluation(ckpt: Path, task: str, given: int, samples: int, clips: int) -> tuple:
    """The real clips and the samples vdm.evaluate scored (sampling is seeded and DDIM is
    deterministic), drawn again through the library: ``(real (B, C, T, H, W), samples
    (B·N, C, T, H, W))``."""
    loaded = load_run(ckpt)
    data_cfg = real_data_config(None, loaded.config, None, 16)
    batches = list(real_batches(data_cfg, "val", clips, 0, 16 // samples))
    seen = []
    evaluate_context_task(
        loaded.model, loaded.sampler(steps=2), task, batches, given, samples, 16,
        guidance_scale=loaded.guidance(), on_samples=lambda real, s: seen.append((real, s)),
    )  # fmt: skip
    real = torch.cat([r for r, _ in seen])
    generated = torch.cat([s for _, s in seen])
    return real, generated


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over frames of each frame's PSNR, for clips (N, C, T, H, W) in [-1, 1]."""
    mse = (((a + 1) / 2 - (b + 1) / 2) ** 2).mean(axis=(1, 3, 4))  # (N, T)
    return (10 * np.log10(1 / mse)).mean(axis=1)


@pytest.mark.parametrize(("task", "frames"), [("predict", 4), ("interpolate", 2)])
def test_evaluate_scores_the_task_beside_its_baselines(context_ckpt, tmp_path, task, frames):
    out = tmp_path / "report.json"
    cfg = compose_config(
        "evaluate", f"ckpt_path={context_ckpt}", f"task={task}", f"context.frames={frames}",
        "num_samples=2", "num_clips=3", "sampler.steps=2", f"out={out}",
    )  # fmt: skip
    report = evaluate(cfg)
    assert json.loads(out.read_text()) == report
    metrics, protocol = report["metrics"], report["protocol"]
    assert protocol["task"] == task and protocol["num_clips"] == 3
    assert protocol["samples_per_clip"] == 2 and protocol["context_frames"] == frames
    assert set(metrics) == {"model", "unconditional", "baseline"}  # no extractor: no FVD

    # The same numbers from the clips themselves, with numpy's PSNR: generated frames only.
    real, generated = (x.double().numpy() for x in rerun_the_evaluation(
        context_ckpt, task, frames, 2, 3))  # fmt: skip
    hidden = ~task_mask(task, real.shape[2], frames).numpy()
    per_sample = numpy_psnr(generated[:, :, hidden], np.repeat(real, 2, 0)[:, :, hidden])
    per_sample = per_sample.reshape(3, 2)  # (clips, samples per clip)
    assert metrics["model"]["psnr"]["mean"] == pytest.approx(per_sample.mean(), rel=1e-4)
    assert metrics["model"]["psnr"]["best"] == pytest.approx(per_sample.max(1).mean(), rel=1e-4)
    # The baselines: the last given frame copied forward, or a cross-fade across the gap.
    guess, gap = real.copy(), np.flatnonzero(hidden)
    before, after = gap[0] - 1, gap[-1] + 1
    for f in gap:
        if task == "predict":
            guess[:, :, f] = real[:, :, before]
        else:
            w = (f - before) / (after - before)
            guess[:, :, f] = (1 - w) * real[:, :, before] + w * real[:, :, after]
    expected = numpy_psnr(guess[:, :, hidden], real[:, :, hidden]).mean()
    assert metrics["baseline"]["psnr"]["mean"] == pytest.approx(expected, rel=1e-4)
    assert metrics["baseline"]["psnr"]["best"] == metrics["baseline"]["psnr"]["mean"]


def test_the_training_run_writes_a_prediction_grid(context_ckpt):
    predict = context_ckpt.parents[1] / "samples" / "step_000002" / "predict"
    grid = decoded(predict / "grid.gif")
    first = decoded(predict / "sample_0000.mp4").astype(int)
    assert first.shape[:2] == (8, 32 * 4) and first.shape[2] == (3 * 32 + 2) * 4
    assert grid.shape[0] == 8
    # given | generated | real, 4x upscaled with 4-px seams; the first half of 8 frames given
    given, generated, real = first[..., :128, :], first[..., 132:260, :], first[..., 264:, :]
    assert np.abs(given[:4] - real[:4]).mean() < 3  # the given frames, as they are
    assert np.abs(generated[:4] - real[:4]).mean() < 3  # returned unchanged by the sampler
    # the frames to generate are blank (0 in [-1, 1]: grey 128) in the given panel
    assert np.abs(given[4:] - 128).max() < 8 and np.abs(real[4:] - 128).max() > 64


def test_evaluate_adds_fvd_of_the_completed_clips_when_an_extractor_is_given(
    context_ckpt, tmp_path
):
    from test_evaluate import FEATURES, ClipStatistics
    from test_metrics import scipy_frechet

    extractor = tmp_path / "stats.pt"
    torch.jit.script(ClipStatistics()).save(str(extractor))
    cfg = compose_config(
        "evaluate", f"ckpt_path={context_ckpt}", "task=predict", "context.frames=4",
        "num_samples=2", "num_clips=3", "sampler.steps=2", f"out={tmp_path / 'r.json'}",
        f"fvd.extractor={extractor}", f"fvd.feature_dim={FEATURES}",
    )  # fmt: skip
    report = evaluate(cfg)
    assert report["protocol"]["extractor"]["feature_dim"] == FEATURES
    # scipy's textbook FVD between the real clips and their completions, drawn again
    real, generated = rerun_the_evaluation(context_ckpt, "predict", 4, 2, 3)
    stats = ClipStatistics()
    expected = scipy_frechet(stats(real).double().numpy(), stats(generated).double().numpy())
    assert report["metrics"]["fvd"] == pytest.approx(expected, rel=1e-4)


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
