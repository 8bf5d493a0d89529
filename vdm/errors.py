"""The exceptions vdm raises for a user's mistake: a config value, a missing or broken file, a
checkpoint of another run. The commands print these as one ``vdm: error:`` line and exit 1;
anything else is a bug and keeps its traceback. Every folder of vdm may import this module."""

from __future__ import annotations


class UserError(ValueError):
    """Input vdm cannot work with; the message names the key or file and the fix, in one line.

    A ``ValueError``, so code that caught vdm's errors as ``ValueError`` still does.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder a key names does not exist."""


class UnknownKeyError(UserError, TypeError):
    """A config key that the object it configures does not take."""


class DataError(UserError, RuntimeError):
    """Data that cannot be read: too many broken files in a row, nothing usable in a folder."""
