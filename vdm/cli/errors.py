"""How the commands end: a user's error is one line on stderr and exit status 1; a run stopped
by a signal exits with the shell's ``128 + n``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from vdm.data.reader import VideoReadError
from vdm.training.guards import NonFiniteTrainingError


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


@contextlib.contextmanager
def user_errors_in_one_line() -> Iterator[None]:
    """Turn the errors that bad input raises (a missing folder or file, a wrong value) into one
    line on stderr and exit status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback instead."""
    try:
        yield
    except (FileNotFoundError, ValueError, VideoReadError, NonFiniteTrainingError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"vdm: error: {error}", file=sys.stderr)
        sys.exit(1)
