"""Errors that are the user's to fix (a config value, a file, a command-line argument), each with a
message naming the key or file, the problem and the fix. A job stopped by one prints it as one line
and exits with status 2 (its traceback goes to the run folder's error.txt); any other exception is
a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user."""


class ConfigValueError(UserError, ValueError):
    """A config value or argument that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named, or the config needs, that is missing or unreadable."""
