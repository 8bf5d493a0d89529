"""python -m vdm.evaluate: FVD of a checkpoint's samples against real clips, with its protocol."""

import hashlib
import json
import math

import pytest
import torch
from conftest import compose_config

from vdm.cli.evaluate import run

FEATURES = 8


class ClipStatistics(torch.nn.Module):
    """A TorchScript-able stand-in for I3D (same call signature): colour means and spreads, and
    the mean absolute change between frames, per channel and clip (+ 2 zero features)."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
        return_features: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        mean = x.mean(dim=(2, 3, 4))
        spread = x.std(dim=(2, 3, 4))
        motion = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(2, 3, 4))[:, :1]
        return torch.cat([mean, spread, motion, torch.zeros_like(motion)], dim=1)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    path = tmp_path_factory.mktemp("extractor") / "stats.pt"
    torch.jit.script(ClipStatistics()).save(str(path))
    return path


def evaluate(ckpt, extractor, *overrides):
    return run(
        compose_config(
            "evaluate", f"ckpt_path={ckpt}", f"fvd.extractor={extractor}",
            f"fvd.feature_dim={FEATURES}", "sampler.steps=2", "batch_size=4", *overrides,
        )
    )  # fmt: skip


def test_evaluate_writes_fvd_and_the_protocol_as_json(conditional_ckpt, extractor, tmp_path):
    out = tmp_path / "metrics.json"
    report = evaluate(conditional_ckpt, extractor, "num_samples=6", "num_real=4", f"out={out}")
    assert json.loads(out.read_text()) == report
    assert math.isfinite(report["metrics"]["fvd"]) and report["metrics"]["fvd"] > 0
    protocol = report["protocol"]
    assert protocol["num_generated"] == 6 and protocol["num_real"] == 4
    assert protocol["frames"] == 8 and protocol["resolution"] == [32, 32]
    assert protocol["weights"] == "EMA" and protocol["global_step"] == 2
    assert protocol["sampler"]["name"] == "ddim2" and protocol["seed"] == 0
    assert protocol["real_data"]["split"] == "val"
    assert protocol["extractor"]["sha256"] == hashlib.sha256(extractor.read_bytes()).hexdigest()
    assert protocol["guidance_scale"] == 2.0  # the run's sample-video scale


def test_default_output_sits_in_the_run_folder(unconditional_ckpt, extractor):
    report = evaluate(unconditional_ckpt, extractor, "num_samples=2", "frames=4")
    out = unconditional_ckpt.parents[1] / "eval" / "last-ddim2-n2-seed0.json"
    assert json.loads(out.read_text())["protocol"]["frames"] == 4 == report["protocol"]["frames"]
    assert report["protocol"]["guidance_scale"] == 1.0


def test_real_clips_can_come_from_another_folder(
    unconditional_ckpt, extractor, shared_videos, tmp_path
):
    report = evaluate(
        unconditional_ckpt, extractor, "data=folder", f"data.root={shared_videos / 'real'}",
        "data.size=32", "data.num_workers=0", "split=train", "num_samples=3",
        f"out={tmp_path / 'm.json'}",
    )  # fmt: skip
    assert report["protocol"]["real_data"]["root"] == str(shared_videos / "real")
    assert report["protocol"]["num_real"] == 3
    assert report["protocol"]["frame_stride"] == 2  # the folder config's


def test_missing_extractor_and_mismatched_resolution_are_clear_errors(unconditional_ckpt, tmp_path):
    cfg = compose_config("evaluate", f"ckpt_path={unconditional_ckpt}")
    with pytest.raises(ValueError, match="fvd.extractor is missing"):
        run(cfg)
    with pytest.raises(FileNotFoundError, match="FVD needs the TorchScript I3D file"):
        evaluate(unconditional_ckpt, tmp_path / "i3d_torchscript.pt")


def test_real_clips_at_another_size_are_refused(unconditional_ckpt, extractor, shared_videos):
    with pytest.raises(ValueError, match=r"data.size=64 differs from the model's 32 px"):
        evaluate(
            unconditional_ckpt, extractor, "data=folder", f"data.root={shared_videos / 'real'}"
        )


def test_data_clip_len_sets_the_frames_and_a_conflicting_frames_is_refused(
    unconditional_ckpt, extractor, shared_videos, tmp_path
):
    folder = ["data=folder", f"data.root={shared_videos / 'real'}", "data.size=32",
              "data.num_workers=0", "num_samples=2"]  # fmt: skip
    report = evaluate(unconditional_ckpt, extractor, *folder, "data.clip_len=4",
                      f"out={tmp_path / 'm.json'}")  # fmt: skip
    assert report["protocol"]["frames"] == 4  # the model trained on 8; data.clip_len is honoured
    with pytest.raises(ValueError, match=r"frames=6 and data.clip_len=4 disagree") as caught:
        evaluate(unconditional_ckpt, extractor, *folder, "data.clip_len=4", "frames=6")
    assert "\n" not in str(caught.value)
    same = evaluate(unconditional_ckpt, extractor, *folder, "data.clip_len=4", "frames=4",
                    f"out={tmp_path / 'same.json'}")  # fmt: skip
    assert same["metrics"] == report["metrics"]  # the same clips, the same FVD
