"""Errors that are the user's to fix (a config value, a file, a command-line argument), each with a
message naming the key or file, the problem and the fix. A job stopped by one prints it as one line
and exits with status 2 (its traceback goes to the run folder's error.txt, or for a command
without one, to a file named on the line: `run_command`); any other exception is a bug and keeps its
traceback."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user."""


class ConfigValueError(UserError, ValueError):
    """A config value or argument that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named, or the config needs, that is missing or unreadable."""


def traceback_file(program: str) -> Path:
    """The current exception's traceback in a new file of the temporary folder, for a command
    that has no run folder of its own."""
    descriptor, name = tempfile.mkstemp(prefix=f"{program}-", suffix=".traceback.txt")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(traceback.format_exc())
    return Path(name)


def run_command(program: str, command: Callable[[], int | None]) -> NoReturn:
    """An entry point's command, its failures as one line on stderr: a user error (the message
    names the key or file and the fix) exits 2; any other exception is a bug, exits 1 and has its
    traceback in a file (`traceback_file`) named on the line."""
    try:
        status = command()
    except UserError as error:
        print(f"{program}: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        try:
            where = f"traceback in {traceback_file(program)}"
        except OSError:
            where = "no traceback file could be written"
        print(f"{program}: unexpected {type(error).__name__}: {error} ({where})", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
