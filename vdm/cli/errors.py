"""How the commands end: a user's error is one line on stderr and exit status 1; a run stopped
by a signal exits with the shell's ``128 + n``."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator

from hydra.errors import InstantiationException

from vdm.errors import UserError
from vdm.training.guards import NonFiniteTrainingError

# vdm's own errors for a user's input, and a diverged run: one line. Anything else is a bug.
USER_ERRORS = (UserError, NonFiniteTrainingError)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


def one_line(error: BaseException) -> str | None:
    """The one line to print for a user's error, or None for a bug (a traceback is due).

    A constructor that rejects its config value, or a key it does not take (Python's
    ``TypeError: ... unexpected keyword argument``), is wrapped by Hydra's ``instantiate`` with
    the key's path: the line names that path.
    """
    if isinstance(error, USER_ERRORS):
        return str(error)
    cause = error.__cause__
    unknown_key = isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause)
    if isinstance(error, InstantiationException) and (
        isinstance(cause, USER_ERRORS) or unknown_key
    ):
        where = re.search(r"^full_key: (\S+)$", str(error), flags=re.M)
        text = str(cause)
        if where and where.group(1) not in text:
            text = f"{where.group(1)}: {text}"
        return text
    return None


def log_traceback_to_files(error: BaseException) -> list[str]:
    """Write ``error``'s traceback to the log files (``<run dir>/train.log``), not the console
    (which gets it from :func:`traceback.print_exception`, on stderr); return their paths."""
    record = logging.LogRecord(
        "vdm", logging.ERROR, __file__, 0, "The run failed with an unexpected error:", None,
        (type(error), error, error.__traceback__),
    )  # fmt: skip
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]


@contextlib.contextmanager
def user_errors_in_one_line() -> Iterator[None]:
    """End a command as its error deserves: vdm's errors for a user's input (a missing folder or
    file, a wrong value or key) as one line on stderr, exit status 1; any other exception, a
    bug, with its traceback on stderr and in ``train.log``, exit status 1.
    ``HYDRA_FULL_ERROR=1`` lets every exception through to Hydra instead."""
    try:
        yield
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        line = one_line(error)
        if line is None:
            files = log_traceback_to_files(error)
            traceback.print_exception(error, file=sys.stderr)
            line = f"unexpected {type(error).__name__}, a bug rather than your input: please "
            line += "report it with the traceback above" + (
                f" (also in {files[0]})" if files else ""
            )
        print(f"vdm: error: {line}", file=sys.stderr)
        sys.exit(1)
