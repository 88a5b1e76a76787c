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


# Set within `flushed_together`: the files written meanwhile reach the disk in one flush at its end.
_flush_deferred = False


@contextlib.contextmanager
def flushed_together() -> Iterator[None]:
    """Within the block, `atomic_path` still writes aside and renames (a kill leaves each file whole
    or absent, a planted link is replaced), but does not flush each file and folder to the disk:
    everything written in the block is flushed once when it ends (os.sync). For the many small files
    of a batched chunk's job folders, which a flush per file makes several times slower to write;
    only a crash of the machine itself within the block could leave one of them empty."""
    global _flush_deferred
    outer, _flush_deferred = _flush_deferred, True
    try:
        yield
    finally:
        _flush_deferred = outer
        if not outer:
            os.sync()


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
        if not _flush_deferred:
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
    if not _flush_deferred:
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
