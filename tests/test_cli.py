"""The README's commands, run as written through the command line (slow: minutes each)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def train(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` with its run folder(s), data and caches under ``tmp_path``."""
    env = {
        **os.environ,
        "VDM_DATA_DIR": str(tmp_path.parent / "data"),
        "WANDB_SILENT": "true",
        "VDM_LOG_DIR": str(tmp_path / "logs"),
    }
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def only_run_dir(tmp_path: Path) -> Path:
    runs = list((tmp_path / "logs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def step_of(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


def test_default_command_with_fewer_steps(tmp_path):
    train(tmp_path, "trainer.max_steps=5")
    run_dir = only_run_dir(tmp_path)
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 5
    assert (run_dir / "samples" / "step_000005" / "grid.gif").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*"))  # wandb offline without a key


def test_four_ddp_processes_share_one_folder_and_one_wandb_run(tmp_path):
    train(tmp_path, "model=unet3d", "trainer.devices=4", "trainer.max_steps=5")
    run_dir = only_run_dir(tmp_path)
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 5
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_transformer_in_bf16_mixed(tmp_path):
    train(tmp_path, "model=transformer", "trainer.precision=bf16-mixed", "trainer.max_steps=5")
    assert step_of(only_run_dir(tmp_path) / "checkpoints" / "last.ckpt") == 5


def test_multirun_gives_each_job_its_checkpoint_and_wandb_run(tmp_path):
    train(tmp_path, "-m", "schedule=linear,cosine", "trainer.max_steps=5")
    (sweep,) = list((tmp_path / "logs" / "multiruns").iterdir())
    for job in ("0", "1"):
        assert step_of(sweep / job / "checkpoints" / "last.ckpt") == 5
        assert len(list((sweep / job / "wandb").glob("offline-run-*"))) == 1


def test_folder_of_real_videos(tmp_path, shared_videos):
    train(
        tmp_path,
        "data=folder",
        f"data.root={shared_videos / 'real'}",
        "data.size=64",
        "trainer.max_steps=5",
    )
    assert step_of(only_run_dir(tmp_path) / "checkpoints" / "last.ckpt") == 5


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = tmp_path / "first"
    train(first, "trainer.max_steps=5", "logger=csv")
    last = only_run_dir(first) / "checkpoints" / "last.ckpt"
    second = tmp_path / "second"
    result = train(second, f"ckpt_path={last}", "trainer.max_steps=10", "logger=csv")
    assert "Restored all states from the checkpoint" in result.stderr + result.stdout
    assert step_of(only_run_dir(second) / "checkpoints" / "last.ckpt") == 10


@pytest.mark.parametrize("logger", ["csv", "null"])
def test_other_loggers(tmp_path, logger):
    run_dir = tmp_path / "here"
    train(
        tmp_path,
        f"logger={logger}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"hydra.run.dir={run_dir}",
    )
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 2
    assert (run_dir / "csv").is_dir() == (logger == "csv")
    assert not (run_dir / "wandb").exists()


def test_bad_input_fails_in_one_line(tmp_path):
    misspelt = train(tmp_path, "trainer.max_step=5", check=False)
    assert misspelt.returncode != 0 and "max_step" in misspelt.stderr
    missing = train(tmp_path, "data=folder", "data.root=/no/such/videos", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("vdm: error: Video folder /no/such")


def test_sample_command_as_written_in_the_issue(conditional_ckpt):
    """``python -m vdm.sample ckpt_path=... num_samples=16 sampler=dpmpp sampler.steps=20``."""
    result = subprocess.run(
        [sys.executable, "-m", "vdm.sample", f"ckpt_path={conditional_ckpt}", "num_samples=16",
         "sampler=dpmpp", "sampler.steps=20"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = conditional_ckpt.parents[1] / "samples" / "last-dpmsolver20-seed0"
    assert f"to {out}" in result.stdout
    assert len(list(out.glob("sample_*.mp4"))) == 16
    assert (out / "grid.gif").is_file() and (out / "samples.npz").is_file()
    assert not list(REPO.glob("*.log")) and not (REPO / ".hydra").exists()  # nothing in the repo


def test_evaluate_command_writes_the_metrics_json(unconditional_ckpt, tmp_path):
    from test_evaluate import FEATURES, ClipStatistics

    extractor = tmp_path / "stats.pt"
    torch.jit.script(ClipStatistics()).save(str(extractor))
    out = tmp_path / "fvd.json"
    result = subprocess.run(
        [sys.executable, "-m", "vdm.evaluate", f"ckpt_path={unconditional_ckpt}",
         f"fvd.extractor={extractor}", f"fvd.feature_dim={FEATURES}", "num_samples=8",
         "sampler=dpmpp", "sampler.steps=5", f"out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FVD " in result.stdout and f"Wrote {out}" in result.stdout
    assert json.loads(out.read_text())["protocol"]["num_generated"] == 8


def test_text_to_video_commands_train_sample_prompts_and_score_adherence(tmp_path):
    """``train.py text_encoder=tiny debug=fast``, then ``vdm.sample prompt=...``,
    ``prompts=FILE`` and ``vdm.evaluate task=adherence``, as the README writes them."""
    train(tmp_path, "text_encoder=tiny", "debug=fast", "run_name=t2v")
    ckpt = tmp_path / "logs" / "runs" / "t2v" / "checkpoints" / "last.ckpt"
    run = [sys.executable, "-m", "vdm.sample", f"ckpt_path={ckpt}", "sampler.steps=3"]
    one = subprocess.run(
        [*run, "prompt=a red square moves right", "num_samples=2", f"out_dir={tmp_path}/one"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").glob("*.mp4"))
    assert names == [f"sample_000{i}_a_red_square_moves_right.mp4" for i in (0, 1)]
    assert (
        np.load(tmp_path / "one" / "samples.npz")["prompts"].tolist()
        == ["a red square moves right"] * 2
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue circle moves up\n\ntwo green triangles moving left\n")
    many = subprocess.run(
        [*run, f"prompts={prompts}", "num_samples=2", "negative_prompt=a red circle",
         f"out_dir={tmp_path}/many"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert many.returncode == 0, many.stderr[-3000:]
    stored = np.load(tmp_path / "many" / "samples.npz")
    assert stored["videos"].shape[0] == 4  # 2 prompts x num_samples
    assert stored["prompts"].tolist()[1:3] == [
        "a blue circle moves up",
        "two green triangles moving left",
    ]
    plain = tmp_path / "plain"
    train(plain, "debug=fast", "run_name=plain")
    plain_ckpt = plain / "logs" / "runs" / "plain" / "checkpoints" / "last.ckpt"
    refused = subprocess.run(
        [sys.executable, "-m", "vdm.sample", f"ckpt_path={plain_ckpt}", "prompt=a red circle"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "trained without a text encoder" in refused.stderr.strip().splitlines()[-1]
    out = tmp_path / "adherence.json"
    scored = subprocess.run(
        [sys.executable, "-m", "vdm.evaluate", f"ckpt_path={ckpt}", "task=adherence",
         "num_samples=4", "sampler.steps=3", f"out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["metrics"]["real"]["colour"] >= 0.9  # real clips show their own captions
    assert set(report["metrics"]["model"]) == {
        "colour",
        "shape",
        "size",
        "direction",
        "count",
        "all",
    }
    assert report["protocol"]["prompts"] == "the real clips' captions"


# Progress lines (vdm.training.progress) after every step: the marker that training runs.
EVERY_STEP = "callbacks.progress_log.every_n_steps=1"


def wait_for_step(log: Path, process: subprocess.Popen, step: int = 2) -> None:
    """Return once ``log`` reports optimizer step ``step`` (``step 2/...``), whatever the
    machine's speed; fail if the process ends first or 10 minutes pass."""
    deadline = time.monotonic() + 600
    while True:
        text = log.read_text() if log.is_file() else ""
        if any(int(n) >= step for n in re.findall(r"\bstep (\d+)/", text)):
            return
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)


def started_training(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """``python train.py ARGS`` in the background, returned once two steps have run."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "VDM_DATA_DIR": str(tmp_path.parent / "data"), "WANDB_SILENT": "true"}
    process = subprocess.Popen(
        [sys.executable, "train.py", *args, EVERY_STEP, f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_step(run_dir / "train.log", process)
    return process, run_dir


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_step_and_exits_with_its_status(tmp_path, signum, status):
    process, run_dir = started_training(
        tmp_path, "debug=fast", "trainer.max_steps=100000", "trainer.val_check_interval=100000"
    )
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == status, stderr[-2000:]
    (saved,) = (run_dir / "checkpoints").glob("interrupted-step-*.ckpt")
    step = step_of(saved)
    assert step > 0 and (run_dir / "checkpoints" / "last.ckpt").resolve() == saved.resolve()
    again = train(
        tmp_path / "resume", "debug=fast", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"trainer.max_steps={step + 2}",
    )  # fmt: skip
    assert again.returncode == 0


def test_sigint_during_validation_stops_within_a_sampler_step_and_resumes(tmp_path):
    """Ctrl-C once the log says ``validating at step 2``: the run stops inside the validation
    (sample videos of many clips and steps would take far longer), saves the training weights
    as training weights, exits 130, and resumes."""
    process, run_dir = started_training(
        tmp_path, "debug=fast", "trainer.max_steps=100000", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=2", "callbacks.sample_videos.num_samples=16",
        "sampler.steps=1000", "callbacks.ema.update_starting_at_step=0",
    )  # fmt: skip
    log = run_dir / "train.log"
    deadline = time.monotonic() + 300
    while "validating at step 2" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert time.monotonic() - sent < 60  # not 48 clips × 1000 steps of sample videos
    (saved,) = (run_dir / "checkpoints").glob("interrupted-step-*.ckpt")
    stored = torch.load(saved, map_location="cpu", weights_only=True)
    assert stored["global_step"] == 2
    differs = [
        not torch.equal(v, stored["current_model_state"][k])
        for k, v in stored["state_dict"].items()
    ]
    assert any(differs)  # EMA and training weights, both kept
    again = train(
        tmp_path / "resume", "debug=fast", f"ckpt_path={saved}", "trainer.max_steps=4",
        "trainer.val_check_interval=2", "callbacks.ema.update_starting_at_step=0",
    )  # fmt: skip
    assert again.returncode == 0


def test_divergence_and_bad_values_exit_1_in_one_line(tmp_path):
    diverged = train(
        tmp_path / "nan", "debug=fast", "optimizer.lr=1e6", "trainer.max_steps=20",
        "trainer.val_check_interval=10", check=False,
    )  # fmt: skip
    assert diverged.returncode == 1
    last_line = diverged.stderr.strip().splitlines()[-1]
    assert last_line.startswith("vdm: error: non-finite") and "at step" in last_line
    for args, key in (
        (["data.clip_len=0"], "data.clip_len=0"),
        (["model=unet3d", "data.size=31"], "data.size=31"),  # debug=fast: the tiny widths, 2 levels
        (["hydra.run.dir=/proc/forbidden"], "hydra.run.dir=/proc/forbidden"),
    ):
        result = train(tmp_path / "bad", "debug=fast", *args, check=False)
        assert result.returncode == 1, args
        assert result.stderr.strip().splitlines()[-1].startswith(f"vdm: error: {key}"), args


@pytest.mark.parametrize(
    "args",
    [
        ["task=predict", "context.video=VIDEO", "context.frames=4"],
        ["task=interpolate", "context.video=VIDEO", "context.frames=2"],
        ["task=extend", "frames=64", "context.video=VIDEO", "context.frames=4"],
        ["task=extend", "frames=64"],
    ],
    ids=["predict", "interpolate", "extend", "extend-from-nothing"],
)
def test_the_task_commands_as_written_in_the_issue(context_ckpt, shared_videos, tmp_path, args):
    """``python -m vdm.sample ckpt_path=CKPT task=... context.video=PATH.mp4 ...``."""
    video = shared_videos / "real" / "Basketball" / "basketball.mp4"
    args = [a.replace("VIDEO", str(video)) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "vdm.sample", f"ckpt_path={context_ckpt}", *args,
         "num_samples=2", "sampler.steps=3", f"out_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = np.load(tmp_path / "samples.npz")
    frames = 64 if "task=extend" in args else 8
    assert saved["videos"].shape == (2, frames, 32, 32, 3)
    assert len(list(tmp_path.glob("sample_*.mp4"))) == 2


def test_the_prediction_evaluation_command(context_ckpt, tmp_path):
    """``python -m vdm.evaluate ckpt_path=CKPT task=predict context.frames=4 num_samples=N``."""
    out = tmp_path / "predict.json"
    result = subprocess.run(
        [sys.executable, "-m", "vdm.evaluate", f"ckpt_path={context_ckpt}", "task=predict",
         "context.frames=4", "num_samples=2", "num_clips=4", "sampler.steps=2", f"out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "VDM_DATA_DIR": str(context_ckpt.parents[2] / "data")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predict: PSNR" in result.stdout
    report = json.loads(out.read_text())
    assert report["protocol"]["num_clips"] == 4 and "baseline" in report["metrics"]


# -- a GPU cluster's pieces, on CPU (docs/cluster.md) --------------------------------------------


def stand_ins(folder: Path) -> Path:
    """``srun`` that runs its command in place and ``scontrol`` that records its arguments;
    returns the file the calls go to."""
    folder.mkdir(parents=True)
    calls = folder / "scontrol.calls"
    (folder / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (folder / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    for name in ("srun", "scontrol"):
        (folder / name).chmod(0o755)
    return calls


def child_of(pid: int) -> int:
    """The one child process of ``pid`` (the training the batch script's srun started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_the_sbatch_script_requeues_on_sigusr1_and_the_requeued_job_resumes(tmp_path):
    from test_slurm import SLURM

    calls = stand_ins(tmp_path / "bin")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VDM_DATA_DIR": str(tmp_path / "data"),
        "VDM_LOG_DIR": str(tmp_path / "logs"),
        "WANDB_SILENT": "true",
        **SLURM,
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_STEP_ID": "0",
    }
    script = ["bash", str(REPO / "scripts" / "slurm" / "train.sbatch"), "debug=fast"]
    job = subprocess.Popen(
        [*script, "trainer.max_steps=100000", "trainer.val_check_interval=100000", EVERY_STEP],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run_dir = tmp_path / "logs" / "runs" / "slurm-4242"
    wait_for_step(run_dir / "train.log", job)
    os.kill(child_of(job.pid), signal.SIGUSR1)  # what --signal=SIGUSR1@90 sends each task
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 138, stderr[-2000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    step = step_of(run_dir / "hpc_ckpt_1.ckpt")
    assert step > 0

    # The requeued job: the same script, variables and arguments (here: two more steps).
    again = subprocess.run(
        [*script, f"trainer.max_steps={step + 2}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "hpc_ckpt_1.ckpt" in again.stdout + again.stderr  # Lightning restored from it
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == step + 2


def test_the_wheel_installs_and_vdm_train_runs_from_another_folder(tmp_path):
    """A non-editable install: the configs travel inside the wheel, the console scripts work
    from any folder. The fresh virtualenv borrows this one's dependencies, not its vdm."""
    import site
    import zipfile

    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(REPO)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = dist.glob("vdm-*.whl")
    assert "vdm/conf/train.yaml" in zipfile.ZipFile(wheel).namelist()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "-q", str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (packages,) = venv.glob("lib/python*/site-packages")
    # A plain path line: this venv's .pth files (the editable vdm) are not run from there.
    (packages / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "VDM_DATA_DIR": str(tmp_path / "data"), "WANDB_SILENT": "true"}
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import vdm; print(vdm.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(packages)
    result = subprocess.run(
        [str(venv / "bin" / "vdm-train"), "debug=fast", "trainer.max_steps=2"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (elsewhere / "outputs" / "runs").iterdir()
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 2
    assert (venv / "bin" / "vdm-sample").is_file() and (venv / "bin" / "vdm-evaluate").is_file()


def test_a_two_trial_optuna_search_returns_the_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the hpo extra")
    result = train(
        tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "debug=fast",
        "trainer.max_steps=2", "logger=csv",
    )  # fmt: skip
    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    import yaml

    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(found["best_params"]) == {"optimizer.lr", "data.batch_size", "model.base_channels"}
    last_losses = []
    for trial in trials:
        with open(trial / "csv" / "version_0" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
        last_losses.append(float(rows[-1]["val/loss"]))
    # The sweeper got each trial's last val/loss and reports the smaller.
    assert found["best_value"] == pytest.approx(min(last_losses), rel=1e-6)
    assert result.returncode == 0


def test_a_rectified_flow_run_samples_with_euler_and_heun(tmp_path):
    """``python train.py diffusion=flow sampler=euler``, then ``vdm.sample`` on its checkpoint
    with both flow samplers; a DDPM sampler on it is a one-line error."""
    train(tmp_path, "diffusion=flow", "sampler=euler", "debug=fast", "trainer.max_steps=2")
    ckpt = only_run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    for sampler in ("euler", "heun"):
        out = tmp_path / sampler
        result = subprocess.run(
            [sys.executable, "-m", "vdm.sample", f"ckpt_path={ckpt}", f"sampler={sampler}",
             "num_samples=2", "sampler.steps=3", f"out_dir={out}"],
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert np.load(out / "samples.npz")["videos"].shape == (2, 8, 32, 32, 3)
    wrong = subprocess.run(
        [sys.executable, "-m", "vdm.sample", f"ckpt_path={ckpt}", "sampler=ddim"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1].endswith("use sampler=euler or sampler=heun.")


def test_latent_diffusion_from_vae_training_to_evaluation(tmp_path):
    """README "Latent diffusion": ``python train.py task=autoencoder ...``, then
    ``python train.py autoencoder=vdm autoencoder.ckpt_path=... debug=fast``, then
    ``vdm.sample`` and ``vdm.evaluate task=predict`` on that checkpoint."""
    cache = {"VDM_CACHE_DIR": str(tmp_path / "cache")}
    train(tmp_path / "vae", "task=autoencoder", "debug=fast", "trainer.max_steps=6", "run_name=vae")
    vae = tmp_path / "vae" / "logs" / "runs" / "vae" / "checkpoints" / "last.ckpt"
    assert vae.is_file(), list((tmp_path / "vae").rglob("*.ckpt"))
    assert list((vae.parents[1] / "samples").glob("step_*/grid.gif"))  # input | reconstruction
    env = {**os.environ, **cache}
    result = subprocess.run(
        [sys.executable, "train.py", "autoencoder=vdm", f"autoencoder.ckpt_path={vae}",
         "debug=fast", "context=mixed", "run_name=latent", f"paths.log_dir={tmp_path / 'logs'}",
         f"paths.data_dir={tmp_path / 'data'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Latent cache ready" in result.stdout + result.stderr
    ckpt = tmp_path / "logs" / "runs" / "latent" / "checkpoints" / "last.ckpt"
    sampled = subprocess.run(
        [sys.executable, "-m", "vdm.sample", f"ckpt_path={ckpt}", "num_samples=2",
         "sampler.steps=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    videos = np.load(next(ckpt.parents[1].glob("samples/last-*/samples.npz")))["videos"]
    assert videos.shape == (2, 8, 32, 32, 3) and videos.dtype == np.uint8  # pixels, decoded
    out = tmp_path / "predict.json"
    evaluated = subprocess.run(
        [sys.executable, "-m", "vdm.evaluate", f"ckpt_path={ckpt}", "task=predict", "num_samples=1",
         "num_clips=2", "sampler.steps=2", f"out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**env, "VDM_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(out.read_text())["protocol"]["num_clips"] == 2


def test_make_trains_two_runs_reuse_the_vae_and_two_ddp_ranks_share_one_latent_cache(
    tmp_path, monkeypatch
):
    """``make train``'s two commands on a small shapes set: the VAE run, the same command again
    (finished: nothing trained), then latent diffusion reading the VAE from where
    ``experiment=shapes_vae`` put it, as 2 DDP processes over gloo that build one cache."""
    small = ["data.num_train=32", "data.num_val=4", "trainer.limit_val_batches=1"]
    cache = tmp_path / "cache"
    monkeypatch.setenv("VDM_CACHE_DIR", str(cache))  # train() passes the environment on
    vae = ["experiment=shapes_vae", *small, "trainer.max_steps=6", "trainer.val_check_interval=6"]
    train(tmp_path, *vae)
    last = tmp_path / "logs" / "runs" / "shapes_vae" / "checkpoints" / "last.ckpt"
    assert step_of(last) == 6
    again = train(tmp_path, *vae)
    assert "the run is finished, nothing to train" in again.stdout + again.stderr
    assert step_of(last) == 6
    latent = train(
        tmp_path, "experiment=shapes_latent", *small, "trainer.max_steps=4",
        "trainer.val_check_interval=4", "callbacks.sample_videos.num_samples=1",
        "trainer.devices=2", "trainer.accelerator=cpu", "run_name=latent",
    )  # fmt: skip
    output = latent.stdout + latent.stderr
    checkpoint = tmp_path / "logs" / "runs" / "latent" / "checkpoints" / "last.ckpt"
    assert step_of(checkpoint) == 4
    (key,) = list((cache / "latents").iterdir())  # one cache for both ranks
    manifest = json.loads((key / "manifest.json").read_text())
    assert manifest["clips"] == 32  # latents.windows=1: one clip per training video
    trained_on = torch.load(checkpoint, map_location="cpu", weights_only=True)["autoencoder"]
    assert manifest["key"]["autoencoder"]["sha256"] == trained_on["sha256"]
    assert "Latent cache ready: 32 clips" in output
    samples = tmp_path / "logs" / "runs" / "latent" / "samples" / "step_000004"
    assert len(list(samples.glob("sample_*.mp4"))) == 3  # one per class, decoded to pixels


def test_finetune_commands_train_sample_and_export_a_lora(tmp_path):
    """The README's fine-tuning commands on a tiny Wan pipeline folder: ``train.py
    experiment=finetune_wan model.path=DIR data=folder data.root=... data.captions=...
    debug=fast`` as the issue writes it, then ``vdm.sample prompt=...`` and
    ``vdm.export_lora``."""
    pytest.importorskip("peft")
    from tiny_pipelines import tiny_wan_pipeline

    from vdm.files.video import write_mp4

    wan = tiny_wan_pipeline(tmp_path / "Wan-tiny")
    clips = tmp_path / "clips"
    rows = ["path,caption"]
    for i in range(6):
        frames = np.zeros((24, 48, 48, 3), np.uint8)
        for t in range(24):
            frames[t, 10:24, 2 + t : 16 + t] = (220, 30 * i, 40)
        name = f"{'train' if i < 4 else 'val'}/clip_{i}.mp4"
        write_mp4(clips / name, frames, fps=8)
        rows.append(f'{name},"a red square moves right, clip {i}"')
    (clips / "captions.csv").write_text("\n".join(rows) + "\n")
    train(
        tmp_path, "experiment=finetune_wan", f"model.path={wan}", "data=folder",
        f"data.root={clips}", f"data.captions={clips / 'captions.csv'}", "debug=fast",
        "run_name=wan", "data.num_workers=0",
    )  # fmt: skip
    ckpt = tmp_path / "logs" / "runs" / "wan" / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["global_step"] == 4 and all(".lora_" in k for k in stored["state_dict"])
    sample = subprocess.run(
        [sys.executable, "-m", "vdm.sample", f"ckpt_path={ckpt}", "prompt=a red square",
         "num_samples=1", "sampler.steps=3", f"out_dir={tmp_path}/samples"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert (tmp_path / "samples" / "sample_0000_a_red_square.mp4").stat().st_size > 0
    export = subprocess.run(
        [sys.executable, "-m", "vdm.export_lora", f"ckpt_path={ckpt}", f"out={tmp_path}/lora"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    other = subprocess.run(
        [sys.executable, "-m", "vdm.sample", f"ckpt_path={ckpt}", "prompt=a red square",
         f"model_path={tmp_path / 'missing'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert other.returncode == 1
    assert "is not a folder" in other.stderr.strip().splitlines()[-1]
