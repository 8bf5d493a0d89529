"""SLURM: a stable run folder per job, and SIGUSR1 → checkpoint at the step's end → requeue →
the requeued job resumes exactly. SLURM itself is stood in for by its variables and a recording
``scontrol`` on PATH; tests/test_cli.py runs scripts/slurm/train.sbatch the same way."""

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import compose_run
from lightning import Callback
from test_faults import COMMON, AtStep, train

from vdm.cli.train import run
from vdm.conf.resolvers import run_name, slurm_run_name
from vdm.files.checkpoint import load_checkpoint

# What SLURM sets for a one-task job (SLURMEnvironment.detect() needs SLURM_NTASKS).
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "vdm",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7"}, "slurm-7"),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}, "slurm-7"),  # srun's first step
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "batch"}, "slurm-7"),  # the batch script
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "2"}, "slurm-7-step2"),  # a third srun
        ({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}, "slurm-7_3"),
    ],
)
def test_the_run_folder_is_keyed_by_job_array_task_and_step(env, name):
    assert slurm_run_name(env) == name


def test_a_given_run_name_wins(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert run_name("mine", "2026-01-01") == "mine"
    assert run_name(None, "2026-01-01") == "slurm-7"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert run_name(None, "2026-01-01") == "2026-01-01"


def stand_in_scontrol(tmp_path: Path, monkeypatch) -> Path:
    """An ``scontrol`` first on PATH that appends its arguments to the returned file."""
    folder = tmp_path / "bin"
    folder.mkdir()
    calls = tmp_path / "scontrol.calls"
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return calls


class CountSteps(Callback):
    def __init__(self) -> None:
        self.first, self.steps = None, 0

    def on_train_batch_start(self, trainer, *args) -> None:
        self.first = trainer.global_step if self.first is None else self.first
        self.steps += 1


def test_sigusr1_checkpoints_the_step_requeues_and_the_requeued_job_resumes_exactly(
    tmp_path, monkeypatch
):
    calls = stand_in_scontrol(tmp_path, monkeypatch)
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    send = AtStep(3, lambda trainer, module: os.kill(os.getpid(), signal.SIGUSR1))
    with pytest.raises(SystemExit) as caught:
        train(tmp_path / "job", *COMMON, "trainer.max_steps=6", extra=[send])
    assert caught.value.code == 138  # 128 + SIGUSR1
    hpc = tmp_path / "job" / "hpc_ckpt_1.ckpt"
    assert load_checkpoint(hpc)["global_step"] == 4  # step 3 (0-based) finished first
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not list((tmp_path / "job" / "checkpoints").glob("interrupted-*"))

    # The requeued job: same variables, same folder, no ckpt_path.
    counter = CountSteps()
    train(tmp_path / "job", *COMMON, "trainer.max_steps=6", extra=[counter])
    assert (counter.first, counter.steps) == (4, 2)  # resumed at step 4, not from scratch
    run(compose_run(tmp_path / "full", *COMMON, "trainer.max_steps=6"))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "job" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 6
    for key in ("state_dict", "current_model_state"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
