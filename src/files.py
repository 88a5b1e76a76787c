"""Writing a file so that a reader never sees half of it and a planted link is never followed: the
content goes to a temporary file in the destination folder, is flushed to the disk, and is renamed
over the name (a rename replaces a symbolic link there, not its target). A failed write (a full
disk, a kill) leaves the old file as it was and no partial one under the name."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from src.errors import UserError

# The temporary files of `atomic_path`, left behind only by a process killed while writing.
PARTIAL = ".partial-"


class DiskFullError(UserError, OSError):
    """A write that found no space on the disk (or went past a quota)."""


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entries (the rename) to the disk, where the file system allows it."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def disk_full(path: Path, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write to `path` that ran out of space."""
    parts = [f"{needed / 2**20:.1f} MiB needed"] if needed is not None else []
    with contextlib.suppress(OSError):
        parts.append(f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free")
    size = f" ({', '.join(parts)})" if parts else ""
    return DiskFullError(
        f"no space left on the disk of {path.parent} to write {path.name}{size}: free space there, or "
        "write elsewhere (paths.output_root=<folder on a larger disk>). Nothing was written."
    )


@contextlib.contextmanager
def atomic_path(path: Path | str, needed: int | None = None) -> Iterator[Path]:
    """A temporary path in `path`'s folder for a library to write (savefig, torch.save); when the
    block ends without an error the file is flushed and renamed over `path`, otherwise removed.
    `needed`: the bytes to be written, for the message of a full disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL}", suffix=path.suffix, dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, needed) from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """`data` as the file `path`, written whole or not at all (`atomic_path`)."""
    with atomic_path(path, len(data)) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: Path | str, text: str) -> None:
    """`text` (UTF-8) as the file `path`, written whole or not at all (`atomic_path`)."""
    write_bytes_atomic(path, text.encode())


def remove_partials(folder: Path) -> list[Path]:
    """Remove the temporary files that a killed write left in `folder`; the ones removed."""
    partials = [path for path in folder.glob(f".*{PARTIAL}*") if path.is_file()]
    for path in partials:
        path.unlink(missing_ok=True)
    return partials
