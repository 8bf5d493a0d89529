"""A checkpoint is data, not code, and a damaged one is named before anything loads it: every
load path reads as data only (``weights_only=True``) and refuses a pickle that would run code
in one line, with nothing run; a file is verified by its ``.checksum`` sidecar and by its zip
archive's own CRC-32s, which tell a damaged checkpoint from a wrong sidecar; a failed save is
one line that keeps the checkpoints already written."""

import errno
import logging
import os
import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import compose_config, compose_run
from test_slurm import SLURM

from vdm.cli.evaluate import run as evaluate
from vdm.cli.sample import run as sample
from vdm.cli.train import run as train
from vdm.errors import UserError
from vdm.files import checkpoint as checkpoint_module
from vdm.files.checkpoint import AtomicCheckpointIO, load_checkpoint
from vdm.files.verify import sidecar_of
from vdm.inference import load_run

# -- pickled code ------------------------------------------------------------------------------


class RunsOnLoad:
    """Pickles as a call of ``function(*args)``: what unpickling without ``weights_only`` runs."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


# Each creates the file `marker` when unpickled; the name torch's refusal gives for it.
PAYLOADS = {
    "Path.touch": (lambda marker: RunsOnLoad(Path.touch, marker), "getattr"),
    "open": (lambda marker: RunsOnLoad(open, str(marker), "w"), "io.open"),
    "os.system": (lambda marker: RunsOnLoad(os.system, f"touch {marker}"), "posix.system"),
}


@pytest.fixture(params=[True, False], ids=["with-checksum", "without-checksum"])
def evil(request, conditional_ckpt, tmp_path) -> tuple[Path, Path, str]:
    """A real vdm checkpoint with code hidden in its config, written by vdm (so with a valid
    ``.checksum``) or without its sidecar: ``(path, marker, global)``, where unpickling it
    without ``weights_only`` creates ``marker``."""
    return write_evil(conditional_ckpt, tmp_path, "os.system", request.param)


def write_evil(real: Path, folder: Path, payload: str, sidecar: bool) -> tuple[Path, Path, str]:
    marker = folder / "marker"
    make, name = PAYLOADS[payload]
    checkpoint = torch.load(real, weights_only=True)
    checkpoint["hyper_parameters"]["notes"] = make(marker)
    path = folder / "evil" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    if not sidecar:
        sidecar_of(path).unlink()
    assert not marker.exists()
    return path, marker, name


def refused_as_code(caught: pytest.ExceptionInfo, path: Path, name: str) -> None:
    """The one line for ``path``, under ckpt_path= (vdm's loads) or checkpoint= (Lightning's)."""
    key = "checkpoint" if str(caught.value).startswith("checkpoint=") else "ckpt_path"
    assert str(caught.value) == (
        f"{key}={path} holds pickled code ({name}), not only data: vdm loads checkpoints as data "
        "only; use a checkpoint written by vdm."
    )


LOAD_PATHS = {
    "load_checkpoint": lambda path, tmp: load_checkpoint(path),
    "AtomicCheckpointIO": lambda path, tmp: AtomicCheckpointIO().load_checkpoint(path),
    # What Lightning passes for a checkpoint it was told is trusted.
    "AtomicCheckpointIO-unsafe": lambda path, tmp: AtomicCheckpointIO().load_checkpoint(
        path, weights_only=False
    ),
    "load_run": lambda path, tmp: load_run(path),
    "sample": lambda path, tmp: sample(
        compose_config("sample", f"ckpt_path={path}", f"out_dir={tmp / 'samples'}")
    ),
    "evaluate": lambda path, tmp: evaluate(
        compose_config("evaluate", f"ckpt_path={path}", "task=predict", f"out={tmp / 'e.json'}")
    ),
    "train-resume": lambda path, tmp: train(compose_run(tmp / "resume", f"ckpt_path={path}")),
}


@pytest.mark.parametrize("load", LOAD_PATHS.values(), ids=LOAD_PATHS.keys())
def test_every_load_path_refuses_pickled_code_in_one_line_and_runs_none(
    evil, tmp_path, monkeypatch, load
):
    """Even where the environment asks torch to default to unpickling code."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker, name = evil
    with pytest.raises(UserError) as caught:
        load(path, tmp_path)
    refused_as_code(caught, path, name)
    assert not marker.exists()
    assert not (tmp_path / "samples").exists() and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_refusal_names_what_the_pickle_would_call(conditional_ckpt, tmp_path, payload):
    path, marker, name = write_evil(conditional_ckpt, tmp_path, payload, sidecar=True)
    with pytest.raises(UserError) as caught:
        load_checkpoint(path)
    refused_as_code(caught, path, name)
    assert not marker.exists()


def test_a_requeued_job_refuses_pickled_code_in_its_hpc_checkpoint(
    conditional_ckpt, tmp_path, monkeypatch
):
    """Lightning's own load: the hpc_ckpt_<n>.ckpt a requeued SLURM job resumes from."""
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker, name = write_evil(conditional_ckpt, tmp_path, "os.system", sidecar=True)
    hpc = tmp_path / "job" / "hpc_ckpt_1.ckpt"
    hpc.parent.mkdir()
    path.rename(hpc)
    sidecar_of(path).rename(sidecar_of(hpc))
    with pytest.raises(UserError) as caught:
        train(compose_run(tmp_path / "job", "trainer.max_steps=2"))
    refused_as_code(caught, hpc, name)
    assert str(caught.value).startswith(f"checkpoint={hpc} holds pickled code")
    assert not marker.exists()


def test_resume_reads_real_checkpoints_as_data_only(conditional_ckpt, tmp_path, monkeypatch):
    """vdm's checkpoints hold only tensors and plain data: a resume through ``vdm.cli.train.run``
    reads a real one with ``weights_only=True`` at every ``torch.load`` (vdm's check and
    Lightning's restore), even where the environment asks torch for the unsafe default."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    calls = []
    load = torch.load

    def recorded(file, *args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recorded)
    trainer = train(
        compose_run(
            tmp_path, "data.num_classes=3", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "callbacks.ema.update_starting_at_step=0", "~logger", f"ckpt_path={conditional_ckpt}",
        )
    )  # fmt: skip
    assert len(calls) >= 2 and all(weights_only is True for weights_only in calls), calls
    assert trainer.global_step == 4
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4


# -- damaged files -----------------------------------------------------------------------------


@pytest.fixture
def copied(conditional_ckpt, tmp_path) -> Path:
    """A copy of a real checkpoint with its sidecar, in a folder of its own."""
    path = tmp_path / "copy" / "step-000002.ckpt"
    path.parent.mkdir()
    path.write_bytes(conditional_ckpt.resolve().read_bytes())
    sidecar_of(path).write_text(sidecar_of(conditional_ckpt).read_text())
    assert load_checkpoint(path)["global_step"] == 2
    return path


def damage_member(path: Path) -> str:
    """Overwrite up to 4 KB in the middle of the largest member's data (a tensor); its name."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 :][:4])
    start = info.header_offset + 30 + name_length + extra_length
    size = min(4096, info.compress_size)
    middle = start + (info.compress_size - size) // 2
    noise = random.Random(0).randbytes(size)
    span = data[middle : middle + size]
    data[middle : middle + size] = bytes(a ^ (b | 1) for a, b in zip(span, noise, strict=True))
    path.write_bytes(bytes(data))
    return info.filename


def every_load_refuses(path: Path, tmp_path: Path, message: str) -> None:
    """``load_checkpoint``, Lightning's load, ``vdm.sample`` and a resume all refuse ``path``
    with ``message`` (ckpt_path=, or checkpoint= for Lightning's load)."""
    for load in ("load_checkpoint", "AtomicCheckpointIO", "sample", "train-resume"):
        with pytest.raises(UserError) as caught:
            LOAD_PATHS[load](path, tmp_path)
        key = "checkpoint" if load == "AtomicCheckpointIO" else "ckpt_path"
        assert str(caught.value) == message.replace("ckpt_path=", f"{key}=", 1), load
    assert not (tmp_path / "samples").exists()


def test_a_damaged_checkpoint_without_checksum_names_the_member(copied, tmp_path):
    sidecar_of(copied).unlink()
    member = damage_member(copied)
    every_load_refuses(copied, tmp_path, (
        f"ckpt_path={copied} is damaged: member {member} fails its CRC-32 check (no .checksum "
        "file to compare with); use an earlier checkpoint."
    ))  # fmt: skip


def test_an_intact_checkpoint_without_checksum_loads_saying_its_crcs_pass(copied, caplog):
    sidecar_of(copied).unlink()
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(copied)["global_step"] == 2
        assert AtomicCheckpointIO().load_checkpoint(copied)["global_step"] == 2
    assert caplog.text.count("has no checksum file") == 2
    assert "it passes its zip archive's own CRC-32 checks: loading it" in caplog.text


@pytest.mark.parametrize(
    ("content", "sidecar", "message"),
    [
        (lambda real: random.Random(1).randbytes(50_000), False,
         "is not a vdm checkpoint: it is not a zip archive (torch.save writes one); use a "
         "checkpoint written by vdm (<run dir>/checkpoints/last.ckpt)."),
        (lambda real: real[: len(real) // 2], False,
         "is damaged: its zip archive is cut short, with no central directory (no .checksum file "
         "to compare with); use an earlier checkpoint."),
        (lambda real: real[: len(real) // 2], True,
         "is damaged: its zip archive is cut short, with no central directory, and its SHA-256 "
         "differs from the one recorded in step-000002.ckpt.checksum; use an earlier checkpoint."),
        (lambda real: b"", False,
         "is damaged: it is empty (no .checksum file to compare with); use an earlier checkpoint."),
    ],
    ids=["random", "truncated", "truncated-with-checksum", "empty"],
)  # fmt: skip
def test_a_file_that_is_no_whole_zip_is_one_line(copied, tmp_path, content, sidecar, message):
    copied.write_bytes(content(copied.read_bytes()))
    if not sidecar:
        sidecar_of(copied).unlink()
    every_load_refuses(copied, tmp_path, f"ckpt_path={copied} {message}")


def test_checksum_and_crc_both_failing_blame_the_checkpoint(copied, tmp_path):
    member = damage_member(copied)
    every_load_refuses(copied, tmp_path, (
        f"ckpt_path={copied} is damaged: member {member} fails its CRC-32 check, and its SHA-256 "
        "differs from the one recorded in step-000002.ckpt.checksum; use an earlier checkpoint."
    ))  # fmt: skip


@pytest.mark.parametrize("how", ["stale-checksum", "replaced-checkpoint"])
def test_a_checksum_that_disagrees_with_a_sound_checkpoint_blames_the_checksum(
    copied, unconditional_ckpt, tmp_path, how
):
    """Never tell the user to discard a checkpoint whose CRCs pass: deleting the sidecar loads
    it."""
    sidecar = sidecar_of(copied)
    if how == "stale-checksum":
        sidecar.write_text(f"{'0' * 64}  {copied.name}\n")
    else:  # another sound checkpoint copied over this one, the old sidecar kept
        copied.write_bytes(unconditional_ckpt.resolve().read_bytes())
    every_load_refuses(copied, tmp_path, (
        f"ckpt_path={copied} differs from the SHA-256 recorded in {sidecar} yet passes its "
        "zip archive's own CRC-32 checks: the checksum file is likely wrong (stale or damaged), "
        "or the checkpoint was replaced after it was written; if you trust the checkpoint, "
        f"delete {sidecar} and load it again."
    ))  # fmt: skip
    sidecar.unlink()
    assert load_checkpoint(copied)["global_step"] == 2


def test_a_checksum_naming_another_file_says_so(copied):
    sidecar = sidecar_of(copied)
    sidecar.write_text(f"{'0' * 64}  step-000004.ckpt\n")
    with pytest.raises(UserError, match=r"\.checksum, which names step-000004\.ckpt, yet passes"):
        load_checkpoint(copied)


@pytest.mark.parametrize("text", ["", "garbage\n", "0123abc  step-000002.ckpt\n", "\x00" * 80])
def test_a_damaged_checksum_file_is_named(copied, tmp_path, text):
    sidecar = sidecar_of(copied)
    sidecar.write_text(text)
    every_load_refuses(copied, tmp_path, (
        f"ckpt_path={copied} has a damaged checksum file {sidecar} (not '<64 hex digits>  <file "
        "name>' as sha256sum writes), while the checkpoint passes its zip archive's own CRC-32 "
        f"checks: if you trust the checkpoint, delete {sidecar} and load it again."
    ))  # fmt: skip
    damage_member(copied)
    with pytest.raises(UserError, match="is damaged: member .* and its checksum file .* is dam"):
        load_checkpoint(copied)


# -- a failed save -----------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def half_written_then_full(obj, file):
    file.write(b"half a checkpoint")
    no_space()


def not_permitted(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize(
    ("target", "replacement", "reason", "fix"),
    [
        (torch, ("save", half_written_then_full), "No space left on device",
         "free space on that disk or pick another hydra.run.dir"),
        (os, ("replace", no_space), "No space left on device",
         "free space on that disk or pick another hydra.run.dir"),
        (checkpoint_module, ("open", not_permitted), "Permission denied",  # open(tmp, "wb")
         "make the folder writable or pick another hydra.run.dir"),
    ],
    ids=["full-while-writing", "full-while-renaming", "unwritable"],
)  # fmt: skip
def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, target, replacement, reason, fix
):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    before = path.read_bytes(), sidecar_of(path).read_text()
    monkeypatch.setattr(target, *replacement, raising=False)
    with pytest.raises(UserError) as caught:
        io.save_checkpoint({"step": 2}, path)
    assert str(caught.value) == (
        f"Could not save the checkpoint last.ckpt in {tmp_path}: {reason}; the checkpoints "
        f"already there are kept whole. To go on, {fix}."
    )
    monkeypatch.undo()
    assert (path.read_bytes(), sidecar_of(path).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.checksum"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_a_read_only_checkpoint_folder_is_one_line(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    path.parent.chmod(0o555)
    try:
        if os.access(path.parent, os.W_OK):
            pytest.skip("this user (root?) writes to a read-only folder")
        with pytest.raises(UserError) as caught:
            io.save_checkpoint({"step": 2}, path)
    finally:
        path.parent.chmod(0o755)
    assert str(caught.value) == (
        f"Could not save the checkpoint last.ckpt in {path.parent}: Permission denied; the "
        "checkpoints already there are kept whole. To go on, make the folder writable or pick "
        "another hydra.run.dir."
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.checksum"]
    assert torch.load(path, weights_only=True) == {"step": 1}
