"""Files that are never seen half-made: written whole under a temporary name, synced, and linked
into place, so a crash or a rival writer leaves either no file or a whole one."""

import contextlib
import os
import secrets
from pathlib import Path


def create_whole(path: Path, data: bytes, *, mode: int) -> int:
    """Make PATH holding DATA, or raise FileExistsError; return a descriptor open for appending
    more, positioned at its end."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # mode before any data
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
            # link, unlike rename, refuses to replace: what someone else made first is kept.
            os.link(temporary, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    except BaseException:
        os.close(fd)
        raise
    fsync_directory(path.parent)
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of DATA (unbuffered: a failed write leaves nothing to fail again)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: Path) -> None:
    """Make a new name in DIRECTORY durable: a file's name lasts only once its folder's does."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
