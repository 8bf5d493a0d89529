"""python -m vdm.sample: a checkpoint to mp4 files, a gif grid and an npz."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import compose_config, train_tiny
from hydra.utils import get_method

from vdm.cli.sample import run
from vdm.diffusion.flow_samplers import FlowEulerSampler
from vdm.files.checkpoint import AtomicCheckpointIO
from vdm.inference import class_labels, load_run
from vdm.training.optim import warmup_cosine

REPO = Path(__file__).resolve().parents[1]


def sample(ckpt: Path, out_dir: Path, *overrides: str) -> Path:
    cfg = compose_config("sample", f"ckpt_path={ckpt}", f"out_dir={out_dir}", *overrides)
    return run(cfg)


def decoded_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize(
    "sampler",
    [["sampler=ddpm", "sampler.steps=4"], ["sampler=ddim", "sampler.steps=3"], ["sampler=dpmpp"]],
    ids=["ddpm", "ddim", "dpmpp"],
)
def test_each_sampler_writes_mp4s_a_gif_grid_and_an_npz(conditional_ckpt, tmp_path, sampler):
    out = sample(conditional_ckpt, tmp_path, "num_samples=3", "batch_size=2", *sampler)
    assert out == tmp_path
    videos = np.load(out / "samples.npz")["videos"]
    assert videos.dtype == np.uint8 and videos.shape == (3, 8, 32, 32, 3)  # the run's clip size
    mp4s = sorted(out.glob("sample_*.mp4"))
    assert [p.name for p in mp4s] == ["sample_0000.mp4", "sample_0001.mp4", "sample_0002.mp4"]
    assert decoded_frames(mp4s[0]).shape == (8, 128, 128, 3)  # upscaled ×4 to be watchable
    grid = decoded_frames(out / "grid.gif")
    assert grid.shape[0] == 8 and grid.shape[1] > 128  # one frame per clip frame, tiles in rows


def test_the_same_seed_gives_identical_clips_and_another_seed_new_ones(conditional_ckpt, tmp_path):
    args = ("num_samples=2", "sampler.steps=3")
    first = np.load(sample(conditional_ckpt, tmp_path / "a", *args) / "samples.npz")["videos"]
    again = np.load(sample(conditional_ckpt, tmp_path / "b", *args) / "samples.npz")["videos"]
    other = np.load(sample(conditional_ckpt, tmp_path / "c", *args, "seed=1") / "samples.npz")[
        "videos"
    ]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 1


def test_clip_i_depends_on_seed_and_i_not_on_how_many_are_sampled(conditional_ckpt, tmp_path):
    """Deterministic DDIM: the first two of three clips are the two clips of a shorter run."""
    args = ("sampler.steps=3", "batch_size=1", "labels=[1]")
    two = sample(conditional_ckpt, tmp_path / "a", "num_samples=2", *args)
    three = sample(conditional_ckpt, tmp_path / "b", "num_samples=3", *args)
    np.testing.assert_array_equal(
        np.load(two / "samples.npz")["videos"], np.load(three / "samples.npz")["videos"][:2]
    )


def test_labels_pick_the_class(conditional_ckpt, tmp_path):
    args = ("num_samples=1", "sampler.steps=3", "guidance_scale=4")
    zero = np.load(sample(conditional_ckpt, tmp_path / "a", *args, "labels=[0]") / "samples.npz")
    two = np.load(sample(conditional_ckpt, tmp_path / "b", *args, "labels=[2]") / "samples.npz")
    assert not np.array_equal(zero["videos"], two["videos"])


def test_frames_other_than_the_training_length(unconditional_ckpt, tmp_path):
    out = sample(unconditional_ckpt, tmp_path, "num_samples=1", "sampler.steps=2", "frames=12")
    assert np.load(out / "samples.npz")["videos"].shape == (1, 12, 32, 32, 3)


def test_default_out_dir_is_inside_the_run_and_names_sampler_and_seed(unconditional_ckpt):
    cfg = compose_config(
        "sample", f"ckpt_path={unconditional_ckpt}", "num_samples=1", "sampler=dpmpp",
        "sampler.steps=2", "seed=7",
    )  # fmt: skip
    out = run(cfg)
    assert out == unconditional_ckpt.parents[1] / "samples" / "last-dpmsolver2-seed7"
    assert (out / "samples.npz").is_file()


def test_sampling_uses_the_ema_weights_stored_in_the_checkpoint(conditional_ckpt):
    checkpoint = torch.load(conditional_ckpt, weights_only=True)
    loaded = load_run(conditional_ckpt)
    assert loaded.weights == "EMA" and loaded.global_step == 2
    ema = {k.removeprefix("denoiser."): v for k, v in checkpoint["state_dict"].items()}
    current = {k.removeprefix("denoiser."): v for k, v in checkpoint["current_model_state"].items()}
    state = loaded.model.denoiser.state_dict()
    assert any(not torch.equal(ema[k], current[k]) for k in state)  # EMA ≠ training weights
    for name, value in state.items():
        torch.testing.assert_close(value, ema[name], rtol=0, atol=0)


def test_guidance_on_an_unconditional_model_is_a_clear_error(unconditional_ckpt, tmp_path):
    with pytest.raises(
        ValueError, match=r"guidance_scale=2 needs a class- or text-conditional model"
    ):
        sample(unconditional_ckpt, tmp_path, "num_samples=1", "guidance_scale=2")


def test_labels_on_an_unconditional_model_or_out_of_range_are_clear_errors(
    unconditional_ckpt, conditional_ckpt, tmp_path
):
    with pytest.raises(ValueError, match=r"labels=\[1\] needs a class-conditional model"):
        sample(unconditional_ckpt, tmp_path, "num_samples=1", "labels=[1]")
    with pytest.raises(ValueError, match=r"labels=\[3\]: this model knows classes 0..2"):
        sample(conditional_ckpt, tmp_path, "num_samples=1", "labels=[3]")


def test_class_labels_come_in_equal_blocks_or_cycle_the_given_ones():
    assert class_labels(None, 6, 3) == [0, 0, 1, 1, 2, 2]
    assert class_labels([0, 2], 5, 3) == [0, 2, 0, 2, 0]
    assert class_labels(None, 4, 0) is None


def python_m(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_a_missing_or_foreign_checkpoint_is_one_line(tmp_path):
    missing = python_m("vdm.sample")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "vdm: error: ckpt_path is missing: python -m vdm.sample "
        "ckpt_path=<run dir>/checkpoints/last.ckpt"
    ]
    foreign = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, foreign)
    result = python_m("vdm.sample", f"ckpt_path={foreign}")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"vdm: error: ckpt_path={foreign} is not a vdm checkpoint")
    assert not list(tmp_path.glob("*.mp4"))


def test_fps_upscale_and_precision_reach_the_files(unconditional_ckpt, tmp_path):
    out = sample(
        unconditional_ckpt, tmp_path, "num_samples=1", "sampler.steps=2", "fps=4", "upscale=2",
        "precision=bf16-mixed", "device=cpu",
    )  # fmt: skip
    with av.open(str(out / "sample_0000.mp4")) as container:
        assert container.streams.video[0].average_rate == 4
    assert decoded_frames(out / "sample_0000.mp4").shape == (8, 64, 64, 3)
    with pytest.raises(ValueError, match="precision=fp8: use one of 32-true, bf16-mixed, 16-mixed"):
        sample(unconditional_ckpt, tmp_path, "num_samples=1", "precision=fp8")


@pytest.fixture(scope="module")
def flow_ckpt(tmp_path_factory) -> Path:
    """A rectified-flow checkpoint of the tiny U-Net (its sample videos used Euler, 5 steps)."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "flow", 0, "diffusion=flow")


def test_the_default_sampler_is_the_one_the_checkpoint_was_trained_with(
    flow_ckpt, conditional_ckpt, tmp_path
):
    flow = load_run(flow_ckpt)
    assert isinstance(flow.sampler(), FlowEulerSampler) and flow.sampler().steps == 5
    out = run(compose_config("sample", f"ckpt_path={flow_ckpt}", "num_samples=1"))
    assert out.name == "last-floweuler5-seed0"  # no sampler=euler needed
    assert run(compose_config("sample", f"ckpt_path={conditional_ckpt}", "num_samples=1",
                              "sampler.steps=2")).name == "last-ddim2-seed0"  # fmt: skip
    with pytest.raises(ValueError, match="use sampler=euler or sampler=heun"):
        sample(flow_ckpt, tmp_path, "sampler=ddim", "num_samples=1")


def test_a_checkpoint_naming_classes_at_their_old_paths_still_loads(conditional_ckpt, tmp_path):
    """Before vdm/training/ existed, configs named vdm.callbacks.SampleVideos, vdm.optim.*."""
    stored = torch.load(conditional_ckpt, map_location="cpu", weights_only=True)
    config = stored["hyper_parameters"]
    config["lr_scheduler"]["_target_"] = "vdm.optim.warmup_cosine"
    config["callbacks"]["sample_videos"]["_target_"] = "vdm.callbacks.SampleVideos"
    config["callbacks"]["nonfinite"]["_target_"] = "vdm.guards.NonFiniteGuard"
    old = tmp_path / "checkpoints" / "old.ckpt"
    AtomicCheckpointIO().save_checkpoint(stored, old)
    loaded = load_run(old)
    assert loaded.config.lr_scheduler._target_ == "vdm.training.optim.warmup_cosine"
    assert loaded.config.callbacks.sample_videos._target_ == "vdm.training.callbacks.SampleVideos"
    assert get_method(loaded.config.lr_scheduler._target_) is warmup_cosine
    fresh = load_run(conditional_ckpt).model.denoiser.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in loaded.model.denoiser.state_dict().items())


def test_prompts_name_the_files_and_are_stored_with_the_clips(text_ckpt, tmp_path):
    prompt = "prompt='A red square, moving right!'"  # quoted: Hydra reads a bare comma as a list
    out = sample(text_ckpt, tmp_path / "one", prompt, "num_samples=2", "sampler.steps=2")
    assert [p.name for p in sorted(out.glob("*.mp4"))] == [
        "sample_0000_a_red_square_moving_right.mp4", "sample_0001_a_red_square_moving_right.mp4"
    ]  # fmt: skip
    stored = np.load(out / "samples.npz")
    assert stored["prompts"].tolist() == ["A red square, moving right!"] * 2
    again = sample(text_ckpt, tmp_path / "again", prompt, "num_samples=1", "sampler.steps=2")
    assert np.array_equal(np.load(again / "samples.npz")["videos"][0], stored["videos"][0])
    default = run(compose_config("sample", f"ckpt_path={text_ckpt}", "prompt=a blue circle",
                                 "num_samples=1", "sampler.steps=2"))  # fmt: skip
    assert default.name.endswith("-seed0-a_blue_circle")  # the folder names a single prompt
    lines = tmp_path / "prompts.txt"
    lines.write_text("a blue circle\n\n  two green triangles  \n")
    many = sample(text_ckpt, tmp_path / "many", f"prompts={lines}", "num_samples=2",
                  "sampler.steps=2", "negative_prompt=red")  # fmt: skip
    assert np.load(many / "samples.npz")["prompts"].tolist() == [
        "a blue circle", "a blue circle", "two green triangles", "two green triangles"
    ]  # fmt: skip


def test_prompt_mistakes_are_one_line(text_ckpt, conditional_ckpt, tmp_path):
    with pytest.raises(ValueError, match="prompt= and prompts= are both set"):
        sample(text_ckpt, tmp_path, "prompt=a", f"prompts={tmp_path}/p.txt")
    with pytest.raises(ValueError, match="prompts=.*is not a file"):
        sample(text_ckpt, tmp_path, f"prompts={tmp_path}/missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        sample(text_ckpt, tmp_path, f"prompts={tmp_path}/empty.txt")
    with pytest.raises(ValueError, match="trained without a text encoder"):
        sample(conditional_ckpt, tmp_path, "prompt=a red circle")


def test_a_frozen_text_encoder_that_moved_is_found_with_text_encoder_path(
    conditional_ckpt, tmp_path
):
    pytest.importorskip("transformers")
    import shutil

    from conftest import tiny_text_encoder

    folder = tiny_text_encoder(tmp_path / "t5")
    ckpt = train_tiny(tmp_path / "run", 0, "text_encoder=t5", f"text_encoder.path={folder}",
                      "text_encoder.max_length=16")  # fmt: skip
    moved = shutil.move(folder, tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=f"{folder} is not a folder"):
        sample(ckpt, tmp_path / "lost", "prompt=a red circle", "sampler.steps=2")
    out = sample(ckpt, tmp_path / "found", "prompt=a red circle", "num_samples=1",
                 "sampler.steps=2", f"text_encoder_path={moved}")  # fmt: skip
    assert np.load(out / "samples.npz")["prompts"].tolist() == ["a red circle"]
    with pytest.raises(ValueError, match="no frozen text encoder from a folder"):
        sample(conditional_ckpt, tmp_path, f"text_encoder_path={moved}")
