"""The error type for the user's mistakes.

`UserError` marks an exception raised where rnnkit checks what the user gave it (a file, a corpus, a
config value, a checkpoint, a batch size) and found it wrong; its message names what was wrong and
how to fix it. The command line prints a `UserError` as one line and exits with status 2; any other
exception is a bug in rnnkit (or in code the user plugged in) and keeps its traceback (status 1).

`UserError` is a `ValueError`, so `except ValueError` in user code keeps working; `MissingFileError`
is also a `FileNotFoundError`.
"""
from __future__ import annotations

__all__ = ["UserError", "MissingFileError"]


class UserError(ValueError):
    """Something the user asked for or gave cannot be used; the message says what to change."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""
