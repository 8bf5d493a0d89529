"""Captions of a folder of videos: from a metadata file or from a ``.txt`` beside each video.

A metadata file lists ``path`` and ``caption`` per video, as a CSV with a header (Open-Sora's
files, whose caption column is named ``text``, are read as they are) or as JSON lines
(``{"path": "a/b.mp4", "caption": "..."}``; a ``.json`` file may also hold one JSON list of
such objects). Paths are relative to the video root, or absolute under it. Without a file, the
caption of ``a/b.mp4`` is the text of ``a/b.txt``, if there is one.

A horizontally flipped clip is a mirror image, so its caption swaps the words ``left`` and
``right`` (:func:`mirror_caption`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from vdm.errors import MissingFileError, UserError

log = logging.getLogger(__name__)

CAPTION_FORMATS = (".csv", ".jsonl", ".json")
MISSING_CAPTION_POLICIES = ("empty", "skip")
# Column names of the caption, in order of preference: ours, then Open-Sora's.
CAPTION_COLUMNS = ("caption", "text")
LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_WARNED: set[str] = set()  # warnings already given in this process (warn_once)


def mirror_caption(text: str) -> str:
    """``text`` with the whole words ``left`` and ``right`` swapped, their case kept ("Left"
    becomes "Right", "LEFT" becomes "RIGHT"; "leftover" and "upright" stay): the caption of
    the horizontally flipped clip.

    Args:
        text: a caption.

    Returns:
        The mirrored caption.
    """

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return LEFT_RIGHT.sub(swap, text)


def one_line(text: str) -> str:
    """A caption as one line: surrounding blanks dropped, inner runs of blanks and line breaks
    made one space."""
    return " ".join(text.split())


def read_caption_file(path: str | Path) -> dict[str, str]:
    """The captions a metadata file lists, by path as written in it (a later row of the same
    path replaces an earlier one).

    Args:
        path: a ``.csv`` (header with ``path`` and ``caption`` or ``text`` columns), ``.jsonl``
            or ``.json`` file.

    Returns:
        ``{path as written: caption}``.

    Raises:
        MissingFileError: the file does not exist.
        UserError: an unknown suffix, a missing column or key, a line that is no JSON object,
            or a file that lists no captions; the message names the file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"Captions file {path} does not exist: set data.captions to a .csv or .jsonl file "
            "of path,caption rows (or null to read a .txt beside each video)."
        )
    suffix = path.suffix.lower()
    if suffix not in CAPTION_FORMATS:
        raise UserError(
            f"Captions file {path}: unknown format {suffix or '(no suffix)'!r}: use a .csv with "
            "path,caption columns or a .jsonl / .json file of path/caption objects."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a BOM
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"Captions file {path} cannot be read as UTF-8 text: {error}.") from None
    if suffix == ".csv":
        captions = _read_csv(path, text)
    elif suffix == ".json" and text.lstrip().startswith("["):
        captions = _read_json_list(path, text)
    else:
        captions = _read_json_lines(path, text)
    if not captions:
        raise UserError(f"Captions file {path} lists no captions: add path,caption rows.")
    return captions


def _read_csv(path: Path, text: str) -> dict[str, str]:
    """Rows of a CSV with a header; the caption column is ``caption`` or else ``text``."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    caption_column = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if "path" not in columns or caption_column is None:
        raise UserError(
            f"Captions file {path}:1: the header {','.join(columns) or '(empty)'} lacks a "
            "'path' and a 'caption' (or 'text') column: start the file with path,caption."
        )
    captions = {}
    for row in reader:
        if row["path"] is None or row[caption_column] is None:
            raise UserError(
                f"Captions file {path}:{reader.line_num}: fewer fields than the header's "
                f"{len(columns)}: quote captions that hold commas."
            )
        captions[row["path"]] = one_line(row[caption_column])
    return captions


def _read_json_lines(path: Path, text: str) -> dict[str, str]:
    """One JSON object per line; blank lines are skipped."""
    captions = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(
                f"Captions file {path}:{number}: not JSON ({error.msg}): write one object "
                '{"path": ..., "caption": ...} per line.'
            ) from None
        name, caption = _path_and_caption(row, f"{path}:{number}")
        captions[name] = caption
    return captions


def _read_json_list(path: Path, text: str) -> dict[str, str]:
    """One JSON list of objects."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"Captions file {path}:{error.lineno}: not JSON ({error.msg}): write a list of "
            '{"path": ..., "caption": ...} objects, or one object per line in a .jsonl file.'
        ) from None
    captions = {}
    for number, row in enumerate(rows if isinstance(rows, list) else [rows], 1):
        name, caption = _path_and_caption(row, f"{path}: item {number}")
        captions[name] = caption
    return captions


def _path_and_caption(row: object, where: str) -> tuple[str, str]:
    """``(path, caption)`` of one JSON row; ``where`` names the file and line in errors."""
    key = next((k for k in CAPTION_COLUMNS if isinstance(row, dict) and k in row), None)
    if not isinstance(row, dict) or "path" not in row or key is None:
        raise UserError(
            f"Captions file {where}: expected an object with 'path' and 'caption' keys, got "
            f"{json.dumps(row)[:80]}."
        )
    if not isinstance(row["path"], str) or not isinstance(row[key], str):
        raise UserError(f"Captions file {where}: 'path' and '{key}' must be strings.")
    return row["path"], one_line(row[key])


def relative_path(name: str, root: Path) -> str | None:
    """A metadata file's path as a path relative to ``root`` (posix), or None when an absolute
    path lies outside it.

    Args:
        name: the path as written: relative to ``root``, or absolute.
        root: the video root.

    Returns:
        ``a/b.mp4`` for ``a/b.mp4``, ``./a/b.mp4`` or ``<root>/a/b.mp4``.
    """
    name = name.strip().replace("\\", "/")
    if not os.path.isabs(name):
        return Path(os.path.normpath(name)).as_posix()
    path = Path(os.path.normpath(name))
    for base in (root, root.resolve()):  # either spelling of a root behind a symlink
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return None


def captions_from_file(
    path: str | Path, root: Path, videos: list[str]
) -> tuple[dict[str, str], list[str]]:
    """The captions a metadata file gives the videos under ``root``.

    Args:
        path: the metadata file (:func:`read_caption_file`).
        root: the video root.
        videos: every video under ``root``, relative (posix).

    Returns:
        ``{relative video path: caption}``, and the file's paths that name no video there.
    """
    on_disk = set(videos)
    captions, absent = {}, []
    for name, caption in read_caption_file(path).items():
        rel = relative_path(name, root)
        if rel in on_disk:
            captions[rel] = caption
        else:
            absent.append(name)
    return captions, absent


def captions_beside(root: Path, videos: list[str]) -> dict[str, str]:
    """The captions of ``.txt`` files beside the videos (``a/b.mp4`` → ``a/b.txt``, UTF-8).

    Args:
        root: the video root.
        videos: the videos under ``root``, relative (posix).

    Returns:
        ``{relative video path: caption}`` for the videos that have one.
    """
    captions = {}
    for rel in videos:
        text_file = (root / rel).with_suffix(".txt")
        if text_file.is_file():
            try:
                captions[rel] = one_line(text_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as error:
                raise UserError(
                    f"Caption {text_file} cannot be read as UTF-8 text ({error}): fix or remove it."
                ) from None
    return captions


def check_missing_caption(policy: str) -> None:
    """Refuse an unknown ``missing_caption`` policy in one line."""
    if policy not in MISSING_CAPTION_POLICIES:
        raise UserError(
            f"Unknown data.missing_caption={policy!r}: use 'empty' (train with \"\") or 'skip' "
            "(leave videos without a caption out)."
        )


def first_names(names: list[str], count: int = 3) -> str:
    """``a, b, c, ...``: the first ``count`` names, for one-line warnings."""
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


@rank_zero_only
def warn_once(message: str) -> None:
    """Log ``message`` as a warning on rank zero, once per process (the train and val sets
    read the same captions file)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def video_captions(
    root: Path, videos: list[str], captions_file: str | Path | None
) -> dict[str, str] | None:
    """The captions of the videos under ``root``: from ``captions_file``, else from ``.txt``
    files beside them. Rows of the file that name no video there are reported in one warning.

    Args:
        root: the video root.
        videos: every video under ``root``, relative (posix).
        captions_file: a metadata file (:func:`read_caption_file`), or None.

    Returns:
        ``{relative video path: caption}``; None when the folder has no captions at all
        (no file, and no video has a ``.txt``).
    """
    if captions_file is None:
        return captions_beside(root, videos) or None
    captions, absent = captions_from_file(captions_file, root, videos)
    if absent:
        warn_once(
            f"{len(absent)} caption(s) in {captions_file} name no video under {root} (paths "
            f"are relative to data.root or absolute under it): {first_names(absent)}"
        )
    return captions
