"""How the commands end: a user's error is one line on stderr and exit status 1; a run stopped
by a signal exits with the shell's ``128 + n``."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

from hydra.errors import InstantiationException

from vdm.data.reader import VideoReadError
from vdm.training.guards import NonFiniteTrainingError

USER_ERRORS = (FileNotFoundError, ValueError, VideoReadError, NonFiniteTrainingError)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


def one_line(error: BaseException) -> str | None:
    """The one line to print for a user's error, or None for a bug (a traceback is due).

    A constructor that rejects its config value, or a key it does not take (``TypeError``), is
    wrapped by Hydra's ``instantiate`` with the key's path: the line names that path.
    """
    if isinstance(error, USER_ERRORS):
        return str(error)
    cause = error.__cause__
    if isinstance(error, InstantiationException) and isinstance(cause, (*USER_ERRORS, TypeError)):
        where = re.search(r"^full_key: (\S+)$", str(error), flags=re.M)
        text = str(cause)
        if where and where.group(1) not in text:
            text = f"{where.group(1)}: {text}"
        return text
    return None


@contextlib.contextmanager
def user_errors_in_one_line() -> Iterator[None]:
    """Turn the errors that bad input raises (a missing folder or file, a wrong value or key)
    into one line on stderr and exit status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback
    instead."""
    try:
        yield
    except (*USER_ERRORS, InstantiationException) as error:
        line = one_line(error)
        if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"vdm: error: {line}", file=sys.stderr)
        sys.exit(1)
