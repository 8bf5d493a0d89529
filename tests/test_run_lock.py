"""One run per run folder (vdm/files/run_lock.py): a live holder refuses a second run, a dead
one, a corrupt lock and the same SLURM job are taken over, the lock goes however the block
ends, of runs racing exactly one wins, and only global rank 0 takes it."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from subprocess import PIPE

import pytest

from vdm.errors import UserError
from vdm.files.run_lock import (
    LOCK_NAME,
    check_run_folder,
    create_lock,
    hold_run_folder,
    owns_run_folder,
    process_state,
    slurm_job,
)

HOST = socket.gethostname()
HAS_PROC = Path("/proc/self/stat").exists()


def write_lock(folder: Path, **record) -> Path:
    """A lock as another run would have written it."""
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps({"host": HOST, "started": "2026-01-01T12:00:00+00:00", **record}))
    return lock


def held_by(lock: Path) -> dict:
    return json.loads(lock.read_text())


@pytest.fixture
def live_pid():
    """The pid of a live process that is not this one."""
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_lock_names_this_run_while_the_block_runs_and_goes_after(tmp_path):
    with hold_run_folder(tmp_path, environ={"SLURM_JOB_ID": "7"}):
        record = held_by(tmp_path / LOCK_NAME)
        assert record["pid"] == os.getpid() and record["host"] == HOST
        assert record["started"] and record["slurm_job"] == "7"
        assert not HAS_PROC or record["pid_start"] == process_state(os.getpid())[1]
    assert not (tmp_path / LOCK_NAME).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_a_missing_folder_is_created(tmp_path):
    with hold_run_folder(tmp_path / "runs" / "a", environ={}):
        assert (tmp_path / "runs" / "a" / LOCK_NAME).is_file()


def test_a_second_run_is_refused_while_the_first_is_alive(tmp_path, live_pid):
    lock = write_lock(tmp_path, pid=live_pid)
    before = lock.read_bytes()
    with pytest.raises(UserError) as refused, hold_run_folder(tmp_path, environ={}):
        pytest.fail("entered a folder another run holds")
    message = str(refused.value)
    for part in (str(tmp_path), f"pid {live_pid}", HOST, "2026-01-01T12:00:00", "wait for it"):
        assert part in message
    assert "hydra.run.dir=" in message and "run_name=" in message
    assert "\n" not in message
    assert lock.read_bytes() == before  # the other run's lock is left alone


def test_the_early_check_refuses_a_live_holder_and_takes_nothing(tmp_path, live_pid, dead_pid):
    check_run_folder(tmp_path / "missing", environ={})
    check_run_folder(tmp_path, environ={})  # free
    assert not (tmp_path / LOCK_NAME).exists()
    lock = write_lock(tmp_path, pid=dead_pid)
    check_run_folder(tmp_path, environ={})  # stale: hold_run_folder will take it over
    assert held_by(lock)["pid"] == dead_pid
    write_lock(tmp_path, pid=live_pid)
    with pytest.raises(UserError, match="in use by another run"):
        check_run_folder(tmp_path, environ={})
    check_run_folder(tmp_path, environ={"LOCAL_RANK": "1"})  # a DDP child of that run


def test_a_live_holder_is_refused_even_for_the_same_slurm_job(tmp_path, live_pid):
    # Two runs of one job on one node (e.g. two background runs given one run_name=).
    write_lock(tmp_path, pid=live_pid, slurm_job="7", slurm_step="0")
    env = {"SLURM_JOB_ID": "7"}
    with pytest.raises(UserError, match="in use by another run"), hold_run_folder(tmp_path, env):
        pass


def test_a_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, dead_pid, caplog):
    write_lock(tmp_path, pid=dead_pid)
    caplog.set_level(logging.INFO, logger="vdm.files.run_lock")
    with hold_run_folder(tmp_path, environ={}):
        assert held_by(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    [record] = caplog.records
    assert record.levelno == logging.WARNING and f"pid {dead_pid}" in record.getMessage()
    assert "no longer running" in record.getMessage()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to tell a reused pid")
def test_a_reused_pid_is_taken_over(tmp_path, live_pid, caplog):
    # The pid is alive, but it is not the process that wrote the lock: it started later.
    write_lock(tmp_path, pid=live_pid, pid_start="1")
    caplog.set_level(logging.WARNING, logger="vdm.files.run_lock")
    with hold_run_folder(tmp_path, environ={}):
        assert held_by(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    assert "no longer running" in caplog.text


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to record a process's start")
def test_a_live_pid_with_its_own_start_time_is_refused(tmp_path, live_pid):
    write_lock(tmp_path, pid=live_pid, pid_start=process_state(live_pid)[1])
    with (
        pytest.raises(UserError, match="in use by another run"),
        hold_run_folder(tmp_path, environ={}),
    ):
        pass


def test_a_lock_with_this_process_pid_is_a_leftover(tmp_path, caplog):
    # A container restarted after a crash gives its new run the same small pid.
    write_lock(tmp_path, pid=os.getpid(), started="yesterday")
    caplog.set_level(logging.WARNING, logger="vdm.files.run_lock")
    with hold_run_folder(tmp_path, environ={}):
        assert held_by(tmp_path / LOCK_NAME)["started"] != "yesterday"
    assert "earlier process" in caplog.text


@pytest.mark.parametrize(
    ("env", "holder_job"),
    [
        ({"SLURM_JOB_ID": "4242"}, "4242"),
        ({"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "batch"}, "4242"),
        ({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}, "7_3"),
    ],
)
def test_the_same_slurm_job_takes_over_from_any_host(tmp_path, env, holder_job, caplog):
    # A requeued job restarts on another node: the old lock names a host we cannot check.
    write_lock(tmp_path, pid=12345, host="node-a", slurm_job=holder_job, slurm_step="0")
    caplog.set_level(logging.INFO, logger="vdm.files.run_lock")
    with hold_run_folder(tmp_path, environ=env):
        assert held_by(tmp_path / LOCK_NAME)["host"] == HOST
    [record] = caplog.records
    assert record.levelno == logging.INFO and "SLURM job" in record.getMessage()


def test_the_same_slurm_job_on_this_host_takes_over_a_dead_run(tmp_path, dead_pid, caplog):
    write_lock(tmp_path, pid=dead_pid, slurm_job="4242", slurm_step="0")
    caplog.set_level(logging.INFO, logger="vdm.files.run_lock")
    with hold_run_folder(tmp_path, environ={"SLURM_JOB_ID": "4242"}):
        pass
    assert [r.levelno for r in caplog.records] == [logging.INFO]


@pytest.mark.parametrize(
    ("env", "holder"),
    [
        ({}, {}),
        ({"SLURM_JOB_ID": "1"}, {"slurm_job": "2", "slurm_step": "0"}),
        ({}, {"slurm_job": "2", "slurm_step": "0"}),
        ({"SLURM_JOB_ID": "2", "SLURM_STEP_ID": "1"}, {"slurm_job": "2", "slurm_step": "0"}),
    ],
    ids=["no-slurm", "other-job", "we-have-no-job", "other-step"],
)
def test_another_host_is_refused(tmp_path, env, holder):
    lock = write_lock(tmp_path, pid=12345, host="node-b", **holder)
    with pytest.raises(UserError) as refused, hold_run_folder(tmp_path, environ=env):
        pass
    message = str(refused.value)
    assert "node-b" in message and "pid 12345" in message and f"delete {lock}" in message
    assert "hydra.run.dir=" in message and "\n" not in message
    assert lock.exists()


def test_the_refusal_is_one_line_whatever_the_lock_holds(tmp_path):
    write_lock(tmp_path, pid=12345, host="evil\nhost", started="a\r\nb")
    with pytest.raises(UserError) as refused, hold_run_folder(tmp_path, environ={}):
        pass
    assert len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe", b"[1, 2]", b'{"pid": "12", "host": "h"}',
     b'{"pid": 0, "host": "h"}', b'{"pid": -1, "host": "h"}', b'{"pid": true, "host": "h"}',
     b'{"pid": 12}'],
)  # fmt: skip
def test_a_corrupt_lock_is_taken_over_with_a_warning(tmp_path, content, caplog):
    (tmp_path / LOCK_NAME).write_bytes(content)
    caplog.set_level(logging.WARNING, logger="vdm.files.run_lock")
    with hold_run_folder(tmp_path, environ={}):
        assert held_by(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    assert "not a lock vdm can read" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize(
    "stop", [RuntimeError("a bug"), SystemExit(138), KeyboardInterrupt()], ids=type
)
def test_the_lock_goes_however_the_block_ends(tmp_path, stop):
    with pytest.raises(type(stop)), hold_run_folder(tmp_path, environ={}):
        raise stop
    assert not (tmp_path / LOCK_NAME).exists()


def test_runs_one_after_another_in_one_folder_all_get_the_lock(tmp_path):
    for _ in range(3):
        with hold_run_folder(tmp_path, environ={}):
            assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_another_run_wrote_meanwhile_is_left(tmp_path, caplog):
    with hold_run_folder(tmp_path, environ={}):
        write_lock(tmp_path, pid=12345, host="node-b")  # someone deleted ours, then started
    assert held_by(tmp_path / LOCK_NAME)["host"] == "node-b"
    assert "replaced by another run" in caplog.text


def test_an_unwritable_run_folder_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("")
    run = tmp_path / "file" / "run"
    with (
        pytest.raises(UserError, match="Cannot write") as refused,
        hold_run_folder(run, environ={}),
    ):
        pass
    assert "\n" not in str(refused.value)


def test_creating_a_lock_twice_wins_once(tmp_path):
    lock = tmp_path / LOCK_NAME
    assert create_lock(lock, b"first")
    assert not create_lock(lock, b"second")
    assert lock.read_bytes() == b"first"


def race(lock: Path, data: bytes, start: threading.Barrier, won: list[bytes]) -> None:
    start.wait()
    if create_lock(lock, data):
        won.append(data)


def test_threads_racing_for_a_free_lock_exactly_one_wins(tmp_path):
    lock, racers = tmp_path / LOCK_NAME, 8
    for _ in range(10):
        start, won = threading.Barrier(racers), []
        threads = [
            threading.Thread(target=race, args=(lock, str(n).encode(), start, won))
            for n in range(racers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and lock.read_bytes() == won[0]
        lock.unlink()
    assert list(tmp_path.iterdir()) == []


# Says it is ready, waits for the go file, tries to hold the folder, holds it a while if it won.
RACER = """
import sys, time
from pathlib import Path
from vdm.errors import UserError
from vdm.files.run_lock import hold_run_folder
folder, ready, go = (Path(a) for a in sys.argv[1:])
ready.touch()
while not go.exists():
    time.sleep(0.001)
try:
    with hold_run_folder(folder, environ={}):
        print("won", flush=True)
        time.sleep(1)
except UserError as error:
    print("refused", error, flush=True)
"""


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_two_runs_starting_together_one_runs_and_one_is_refused(tmp_path, stale, dead_pid):
    folder, go = tmp_path / "run", tmp_path / "go"
    if stale:  # both find a dead run's lock and take it over: still only one may win
        folder.mkdir()
        write_lock(folder, pid=dead_pid)
    ready = [tmp_path / f"ready{n}" for n in range(2)]
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(folder), str(r), str(go)], stdout=PIPE)
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both are past their imports: they race for the lock at the same moment
    outputs = sorted(racer.communicate(timeout=60)[0].decode() for racer in racers)
    assert outputs[0].startswith("refused") and "in use by another run" in outputs[0]
    assert outputs[1] == "won\n"
    assert not (folder / LOCK_NAME).exists()


@pytest.mark.parametrize(
    ("env", "owner"),
    [
        ({}, True),  # a single process
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),  # rank 0 once Lightning has launched
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # a child Lightning started
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # the first process of node 1
        ({"RANK": "3", "LOCAL_RANK": "0"}, False),  # torchrun
        ({"SLURM_PROCID": "0"}, True),  # a SLURM job's first task (or its batch script)
        ({"SLURM_PROCID": "2"}, False),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # a child in an interactive job
        ({"LOCAL_RANK": ""}, True),  # not a number: says nothing
    ],
)
def test_only_global_rank_zero_owns_the_run_folder(env, owner):
    assert owns_run_folder(env) is owner


def test_other_ranks_neither_take_nor_judge_the_lock(tmp_path, live_pid):
    lock = write_lock(tmp_path, pid=live_pid)
    with hold_run_folder(tmp_path, environ={"LOCAL_RANK": "1"}):
        assert held_by(lock)["pid"] == live_pid
    assert held_by(lock)["pid"] == live_pid


@pytest.mark.parametrize(
    ("env", "job"),
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7"}, ("7", "0")),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "batch"}, ("7", "0")),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "2"}, ("7", "2")),
        (
            {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"},
            ("7_3", "0"),
        ),
    ],
)
def test_the_slurm_job_is_keyed_like_the_run_folder(env, job):
    assert slurm_job(env) == job
