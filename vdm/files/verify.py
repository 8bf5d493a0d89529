"""Whether a checkpoint file can be trusted, and reading it as data only: its SHA-256 against
the ``.checksum`` sidecar written beside it, else (or when they disagree) the CRC-32 of every
member of its zip archive, then ``torch.load(weights_only=True)``: a checkpoint is data, never
code. Every checkpoint vdm reads goes through :func:`verify_checkpoint_file` and
:func:`load_plain`: the run's own, Lightning's resume, and the autoencoder, text-encoder and LoRA
checkpoints to come."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from vdm.errors import MissingFileError, UserError

log = logging.getLogger(__name__)


# The sidecar's suffix. Not ".sha256": Lightning numbers hpc_ckpt_<n>.ckpt from every digit
# after "hpc_ckpt_" in a file name, so "hpc_ckpt_1.ckpt.sha256" would read as checkpoint 1256.
SIDECAR_SUFFIX = ".checksum"


# sha256sum's line: the digest, a space, " " (text) or "*" (binary), the file's name.
SIDECAR_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](\S.*)")


# The phrase for a file that is no zip archive at all: torch.save always writes one.
NOT_A_ZIP = "it is not a zip archive (torch.save writes one)"


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of the file ``path`` as 64 hex digits (``sha256sum``'s)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(files: list[Path]) -> str:
    """One SHA-256 over several files' names and bytes, in the given order, read in 1 MiB blocks
    (weights may be many GB): a model folder's digest, the same wherever the folder lies."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def files_sha256_remembered(files: list[Path], folder: Path | None) -> str:
    """:func:`files_sha256`, remembered in ``folder`` by each file's resolved path, size and
    modification time: a 28 GB base model is hashed once, not at every load and resume. A file
    that changed (another size or time) is hashed again; ``folder`` None remembers nothing."""
    if folder is None:
        return files_sha256(files)
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    memo = folder / f"{key}.sha256"
    try:
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    digest = files_sha256(files)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = memo.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(digest)
        os.replace(partial, memo)  # atomic: a reader sees no digest or the whole one
    except OSError:  # a read-only cache only costs the hash next time
        pass
    return digest


def sidecar_of(path: str | Path) -> Path:
    """``x.ckpt.checksum`` beside the file ``path`` points to (``last.ckpt`` is a link)."""
    real = Path(path).expanduser().resolve()
    return real.with_name(real.name + SIDECAR_SUFFIX)


def zip_damage(path: Path) -> str | None:
    """What is wrong with the zip archive that a torch checkpoint is, or None when every member
    passes its CRC-32 check: the check a file without a sidecar still has."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        return "it is empty"
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if head != b"PK\x03\x04":
            return NOT_A_ZIP
        return "its zip archive is cut short, with no central directory"
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:  # reading to the end checks the CRC-32
                    while member.read(1 << 20):
                        pass
            except zipfile.BadZipFile as error:
                if "CRC" in str(error):
                    return f"member {info.filename} fails its CRC-32 check"
                return f"member {info.filename} is unreadable ({error})"
            except (zlib.error, EOFError, OSError, NotImplementedError) as error:
                return f"member {info.filename} is unreadable ({error})"
    return None


def read_sidecar(sidecar: Path) -> tuple[str, str] | None:
    """``(digest, name)`` from a sidecar's ``<64 hex digits>  <name>`` line; None when its text
    is anything else (a damaged sidecar)."""
    try:
        text = sidecar.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    found = SIDECAR_LINE.fullmatch(text.rstrip("\n"))
    return (found.group(1).lower(), found.group(2)) if found else None


def verify_checkpoint_file(path: str | Path, key: str) -> Path:
    """Check the file ``path`` before anything unpickles it: against its SHA-256 sidecar, and by
    the CRC-32 of each member of its zip archive when the sidecar is missing or disagrees, so a
    message says which of the two is likely wrong. The one check for every checkpoint vdm reads
    (runs, and the autoencoder, text-encoder and LoRA checkpoints to come); load it next with
    :func:`load_plain`.

    Args:
        path: the checkpoint file (a link is followed).
        key: the config key that named it, for the messages (``ckpt_path``).

    Returns:
        ``path`` with ``~`` expanded.

    Raises:
        MissingFileError: ``path`` is not a file.
        UserError: the file is damaged, is no zip archive, or disagrees with its sidecar.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"{key}={path} does not exist: pass a checkpoint such as "
            "<run dir>/checkpoints/last.ckpt."
        )
    try:
        problem = file_problem(path, key)
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error}): make it readable or copy it."
    if problem:
        raise UserError(f"{key}={path} {problem}")
    return path


def file_problem(path: Path, key: str) -> str | None:
    """What :func:`verify_checkpoint_file` finds wrong with ``path``, as the end of a sentence
    that starts with ``key=path``; None when the file verifies."""
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        damage = zip_damage(path)
        if damage == NOT_A_ZIP:
            return (
                f"is not a vdm checkpoint: {damage}; use a checkpoint written by vdm "
                "(<run dir>/checkpoints/last.ckpt)."
            )
        if damage:
            return (
                f"is damaged: {damage} (no {SIDECAR_SUFFIX} file to compare with); use an "
                "earlier checkpoint."
            )
        log.warning(
            "%s=%s has no checksum file (copied without it, or written before vdm kept them); "
            "it passes its zip archive's own CRC-32 checks: loading it",
            key, path,
        )  # fmt: skip
        return None
    recorded = read_sidecar(sidecar)
    if recorded and sha256_of(path) == recorded[0]:
        return None
    # The sidecar is damaged or disagrees: the zip's own CRCs tell which of the two is wrong.
    damage = zip_damage(path)
    if damage and recorded is None:
        return (
            f"is damaged: {damage}, and its checksum file {sidecar} is damaged too; use an "
            "earlier checkpoint."
        )
    if damage:
        return (
            f"is damaged: {damage}, and its SHA-256 differs from the one recorded in "
            f"{sidecar.name}; use an earlier checkpoint."
        )
    trust = f"if you trust the checkpoint, delete {sidecar} and load it again."
    if recorded is None:
        return (
            f"has a damaged checksum file {sidecar} (not '<64 hex digits>  <file name>' as "
            f"sha256sum writes), while the checkpoint passes its zip archive's own CRC-32 "
            f"checks: {trust}"
        )
    named = "" if recorded[1] == path.resolve().name else f", which names {recorded[1]},"
    return (
        f"differs from the SHA-256 recorded in {sidecar}{named} yet passes its zip archive's own "
        "CRC-32 checks: the checksum file is likely wrong (stale or damaged), or the checkpoint "
        f"was replaced after it was written; {trust}"
    )


def load_plain(path: str | Path, key: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` as data only (``weights_only=True``): tensors, dicts, lists, numbers and
    strings; a pickle that would run code on loading is refused in one line, and nothing in it
    runs. Call :func:`verify_checkpoint_file` first.

    Args:
        path: the checkpoint file.
        key: the config key that named it, for the messages.
        map_location: where tensors go (``torch.load``'s argument).
        mmap: map the tensors from the file instead of reading them (needs a zip checkpoint).

    Raises:
        UserError: the file holds pickled code or other objects, or torch cannot read it.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "weights only load failed" in str(error).lower():
            # torch names what the pickle would call: "GLOBAL posix.system", "GLOBAL getattr".
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            what = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"{key}={path} holds pickled code{what}, not only data: vdm loads checkpoints "
                "as data only; use a checkpoint written by vdm."
            ) from None
        reason = first_line(error)
    except (RuntimeError, EOFError, OSError) as error:
        reason = first_line(error)
    raise UserError(
        f"{key}={path} is not a vdm checkpoint: torch cannot read it ({reason}); use a "
        "checkpoint written by vdm."
    )


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (at most 200 characters), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
