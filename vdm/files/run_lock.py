"""One run per run folder: ``<folder>/.vdm-run.lock`` names the run that writes there.

Two runs in one folder would mix their ``metrics.csv``, ``train.log`` and samples, and
``last.ckpt`` would point at either. :func:`hold_run_folder` writes the lock when a run starts
and removes it when the run ends, however it ends. A lock already there is judged by who wrote
it:

- a live process on this host: refused (wait, or pick another folder);
- a dead process on this host (killed, crashed): taken over, with a warning;
- the same SLURM job and step (a requeued job, on any node): taken over, with an info line;
- another host and another (or no) SLURM job: refused, since its pid cannot be checked from
  here; the message says to delete the lock if that run is over;
- a file that cannot be read as a lock: taken over, with a warning.

Only the process that owns the run folder (global rank 0, see :func:`owns_run_folder`) takes
the lock; the other DDP ranks run the same command and do nothing here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from vdm.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".vdm-run.lock"

# The variables that give a process's rank, as Lightning's launchers and SLURM set them. The
# launcher starts ranks > 0 as children running the same command, with LOCAL_RANK (and
# NODE_RANK) set; torchrun sets RANK and GROUP_RANK; under SLURM every task has SLURM_PROCID.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")

# Attempts at taking a lock that other starting runs keep replacing; one or two suffice unless
# several runs start in the folder at the same moment.
MAX_ATTEMPTS = 5

OTHER_FOLDER = "give this run another folder with hydra.run.dir=... or run_name=..."


def owns_run_folder(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is the one that owns the run folder: global rank 0.

    Args:
        environ: The environment to read (``os.environ`` when None).

    Returns:
        True when no rank variable is set or all of them are 0. A value that is not an integer
        says nothing about the rank and is ignored.
    """
    env = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = env.get(name, "").strip()
        if value.lstrip("-").isdigit() and int(value) != 0:
            return False
    return True


def slurm_job(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """This process's SLURM job and step, or None outside SLURM.

    Args:
        environ: The environment to read (``os.environ`` when None).

    Returns:
        ``(job, step)``: the job is ``<array job>_<task>`` for an array task, else
        ``SLURM_JOB_ID``; the step is ``SLURM_STEP_ID``, with the batch script's step (or
        none) counted as step 0, as vdm/conf/resolvers.py names folders. A requeued job keeps
        its job id and numbers its steps from 0 again, so it finds the same pair.
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    elif env.get("SLURM_JOB_ID"):
        job = env["SLURM_JOB_ID"]
    else:
        return None
    step = env.get("SLURM_STEP_ID", "0")
    return job, step if step.isdigit() else "0"


def process_state(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of a process from ``/proc/<pid>/stat``, or None without it.

    The start time (clock ticks since boot) tells a reused pid from the process that wrote a
    lock; the state tells a zombie (``Z``), which ``os.kill(pid, 0)`` still finds, from a live
    process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and brackets: split after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` is a running process on this host, and the one started at ``start``.

    Args:
        pid: A process id (> 0).
        start: Its start time as :func:`process_state` reads it, when the lock recorded one.

    Returns:
        False for no such process, a zombie, or a process started at another time (the pid
        was reused); True otherwise, including another user's process.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    except (OverflowError, OSError):
        return False
    state = process_state(pid)
    if state is None:
        return True
    return state[0] != "Z" and (start is None or state[1] == start)


def this_run(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The lock's content for this process: pid, host, start time, SLURM job and step."""
    record: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    state = process_state(os.getpid())
    if state is not None:
        record["pid_start"] = state[1]
    job = slurm_job(environ)
    if job is not None:
        record["slurm_job"], record["slurm_step"] = job
    return record


def parse_lock(data: bytes) -> dict[str, Any] | None:
    """The record a lock file holds, or None when it is not one (empty, cut short, edited)."""
    try:
        record = json.loads(data)
    except ValueError:  # bad JSON or bad UTF-8
        return None
    if not isinstance(record, dict):
        return None
    pid, host = record.get("pid"), record.get("host")
    # pid 0 and negative pids name process groups for os.kill, never one process.
    if type(pid) is not int or pid <= 0 or not isinstance(host, str) or not host:
        return None
    return record


def create_lock(lock: Path, data: bytes) -> bool:
    """Create ``lock`` holding ``data`` unless it exists; of runs racing, exactly one wins.

    The data goes to a temporary file first and is then hard-linked to the lock's name, which
    fails when that name exists: the lock appears whole, so a run reading it never sees a
    half-written one. Where the file system has no hard links, ``O_CREAT | O_EXCL`` decides.

    Args:
        lock: The lock file's path.
        data: What it holds.

    Returns:
        True when this call created the lock, False when it existed.
    """
    tmp = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass  # no hard links here (some FUSE or SMB mounts): fall back on O_EXCL
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return True


def describe(record: dict[str, Any]) -> str:
    """``pid 12 on node1, started 2026-01-01T12:00:00+00:00, SLURM job 7`` for messages."""
    text = f"pid {record['pid']} on {record['host']}, started {record.get('started', '?')}"
    if record.get("slurm_job"):
        text += f", SLURM job {record['slurm_job']}"
        if record.get("slurm_step", "0") != "0":
            text += f" step {record['slurm_step']}"
    return text


def one_line(text: str) -> str:
    """``text`` with control characters (a newline in a host name or path) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def judge(lock: Path, holder: dict[str, Any] | None, ours: dict[str, Any]) -> tuple[int, str]:
    """Whether this run may take over the lock ``holder`` wrote, and what to log when it does.

    Args:
        lock: The lock file.
        holder: Its parsed record, None when it could not be parsed.
        ours: This run's record (:func:`this_run`).

    Returns:
        The log level and message of the takeover.

    Raises:
        UserError: The holder may still be running; the message names it and the fix.
    """
    folder = lock.parent
    if holder is None:
        return logging.WARNING, f"Taking over {lock}, which is not a lock vdm can read."
    who = describe(holder)
    theirs = (holder.get("slurm_job"), holder.get("slurm_step", "0"))
    same_job = theirs[0] is not None and theirs == (ours.get("slurm_job"), ours.get("slurm_step"))
    if holder["host"] == ours["host"]:
        if holder["pid"] == ours["pid"]:
            # Our own pid, yet we never took this lock: an earlier process got the same pid
            # (a container restarts with small pids) and did not remove its lock.
            return logging.WARNING, f"Taking over {lock}, left by an earlier process ({who})."
        if process_alive(holder["pid"], holder.get("pid_start")):
            raise UserError(
                one_line(
                    f"{folder} is in use by another run ({who}; lock {lock}): wait for it to "
                    f"end, or {OTHER_FOLDER}"
                )
            )
        if same_job:
            return logging.INFO, f"Taking over {lock} from this SLURM job's previous run ({who})."
        return logging.WARNING, f"Taking over {lock}: its run ({who}) is no longer running."
    if same_job:
        # A requeued job may start on any node: its own lock, whichever host wrote it.
        return logging.INFO, f"Taking over {lock} from this SLURM job's previous run ({who})."
    raise UserError(
        one_line(
            f"{folder} is in use by a run on another host ({who}; lock {lock}): if that run is "
            f"over, delete {lock}; otherwise {OTHER_FOLDER}"
        )
    )


def remove_if_unchanged(lock: Path, seen: bytes) -> None:
    """Remove ``lock`` if it still holds ``seen``, so that of two runs taking over one stale
    lock, the second cannot remove the lock the first has just written."""
    aside = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(lock, aside)  # atomic: of two runs, one moves the file
    except FileNotFoundError:
        return  # another run moved it first
    if aside.read_bytes() != seen:
        # A fresh lock another run has just written: put it back, unless a third run has
        # meanwhile written one more (then that one stands).
        with suppress(OSError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)


def take_lock(lock: Path, environ: Mapping[str, str] | None = None) -> bytes:
    """Write ``lock`` for this run, taking over a stale one; return what was written.

    Raises:
        UserError: Another run may hold it, or the folder cannot be written.
    """
    data = json.dumps(this_run(environ), indent=1).encode() + b"\n"
    ours = json.loads(data)
    for _ in range(MAX_ATTEMPTS):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            if create_lock(lock, data):
                return data
            seen = lock.read_bytes()
        except FileNotFoundError:
            continue  # released between our create and our read: try again
        except OSError as error:
            raise UserError(
                one_line(
                    f"Cannot write {lock} ({error.strerror or error}): make {lock.parent} "
                    f"writable, or {OTHER_FOLDER}"
                )
            ) from None
        level, message = judge(lock, parse_lock(seen), ours)
        log.log(level, one_line(message))
        remove_if_unchanged(lock, seen)
    raise UserError(
        one_line(
            f"{lock} keeps changing: other runs are starting in {lock.parent} at the same "
            f"time; start one run at a time there, or {OTHER_FOLDER}"
        )
    )


def release_lock(lock: Path, data: bytes) -> None:
    """Remove ``lock`` if it still holds ``data``; a lock another run wrote stays."""
    try:
        current = lock.read_bytes()
    except FileNotFoundError:
        log.warning("%s was deleted while this run held it.", lock)
        return
    if current != data:
        log.warning("%s was replaced by another run while this one held it; left it.", lock)
        return
    lock.unlink(missing_ok=True)


def check_run_folder(folder: Path, environ: Mapping[str, str] | None = None) -> None:
    """Refuse early when another run holds ``folder``, without taking its lock.

    For a check before anything is written there (Hydra writes ``.hydra/`` and opens
    ``train.log`` before the task runs); :func:`hold_run_folder` takes the lock later. Like it,
    this does nothing on ranks other than 0, so the DDP ranks that Lightning starts with the same
    run folder pass.

    Args:
        folder: The run folder.
        environ: The environment to read ranks and SLURM's job from (``os.environ`` when None).

    Raises:
        UserError: Another run may be writing to ``folder`` (the message of
            :func:`hold_run_folder`).
    """
    if not owns_run_folder(environ):
        return
    lock = Path(folder) / LOCK_NAME
    try:
        seen = lock.read_bytes()
    except OSError:
        return  # no lock (or an unreadable folder, which hold_run_folder reports)
    judge(lock, parse_lock(seen), this_run(environ))


@contextmanager
def hold_run_folder(folder: Path, environ: Mapping[str, str] | None = None) -> Iterator[None]:
    """Hold ``<folder>/.vdm-run.lock`` for the block, so that no second run writes there.

    The lock is removed when the block ends, also by an exception or a ``SystemExit`` (a
    signal's stop). Only the process that owns the run folder takes it (see
    :func:`owns_run_folder`); on the other ranks this does nothing.

    Example::

        with hold_run_folder(Path(cfg.paths.output_dir)):
            fit(cfg)

    Args:
        folder: The run folder (created if missing).
        environ: The environment to read ranks and SLURM's job from (``os.environ`` when None).

    Raises:
        UserError: Another run may be writing to ``folder``; the one-line message names it
            and the fix.
    """
    if not owns_run_folder(environ):
        yield
        return
    lock = Path(folder) / LOCK_NAME
    data = take_lock(lock, environ)
    pid = os.getpid()
    try:
        yield
    finally:
        # A forked child (a data loader worker) unwinding this frame must not remove the lock.
        if os.getpid() == pid:
            release_lock(lock, data)
