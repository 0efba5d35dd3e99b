"""The files that decide whom to trust (private keys, authorized keys, known servers) are read
only if nobody but their owner could have changed them, as OpenSSH's StrictModes: the file and
its folder must belong to the user or root and be writable by their owner alone.

A folder others may write lets them delete or replace the file in it, unless it has the sticky
bit (as /tmp has): there only a file's owner may remove or rename it, and a file someone else
put there is refused for its owner. So a sticky folder of the user's or root's is accepted,
where OpenSSH refuses it.
"""

import contextlib
import os
import pwd
import shlex
import stat
from pathlib import Path

from fedchain.trust.errors import TrustError

PRIVATE_FOLDER_MODE = 0o700


def read_trust_file(path: Path, *, secret: bool = False, max_bytes: int | None = None) -> bytes:
    """PATH's bytes, read from the very file check_trust_file passed; at most MAX_BYTES."""
    # O_NONBLOCK: a FIFO put where the file should be is refused instead of hanging the open.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        check_trust_file(path, secret=secret, opened=fd)
        with open(fd, "rb", closefd=False) as file:
            data = file.read(-1 if max_bytes is None else max_bytes + 1)
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:
        raise TrustError(f"{path} is over {max_bytes} bytes, too large to be {_kind(secret)}")
    return data


def check_trust_file(path: Path, *, secret: bool = False, opened: int | None = None) -> None:
    """TrustError, saying what to run, unless PATH is a regular file that only its owner (the
    user or root) may write, or with SECRET read, in a folder that only its owner may write.
    OPENED: a descriptor of PATH, to check the file that will be read."""
    path = Path(path)
    status = os.fstat(opened) if opened is not None else os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise TrustError(f"{path} is not a regular file, so it cannot be {_kind(secret)}")
    mode, shown = stat.S_IMODE(status.st_mode), _quoted(path)
    if secret and mode & 0o077:
        raise TrustError(
            f"{path} can be read or written by others (mode {mode:03o}), so the key in it may"
            f" be known; if it is still secret, run `chmod 600 {shown}`"
        )
    if mode & 0o022:
        raise TrustError(
            f"{path} can be written by others (mode {mode:03o}), so anyone could change whom"
            f" it trusts; if what it holds is still yours, run `chmod go-w {shown}`"
        )
    if status.st_uid not in _trusted_owners():
        owner, me = _user_name(status.st_uid), _user_name(os.geteuid())
        raise TrustError(
            f"{path} belongs to {owner}, not to you ({me}) or root, so {owner} could change"
            f" whom it trusts; if what it holds is yours, run `chown {os.geteuid()} {shown}`"
            " as root"
        )
    check_folder_of(path)


def check_folder_of(path: Path) -> None:
    """TrustError, saying what to run, if others may replace PATH: its folder (and the real
    file's, when PATH is a symbolic link) must be writable by its owner, the user or root, only.
    A folder not made yet passes: make_private_folders makes it."""
    path = Path(path)
    seen = set()
    for folder in (path.parent, Path(os.path.realpath(path)).parent):
        try:
            status = os.stat(folder)
        except FileNotFoundError:
            continue
        if (status.st_dev, status.st_ino) in seen:
            continue
        seen.add((status.st_dev, status.st_ino))
        named = folder if folder != Path(".") else Path.cwd()  # `chmod go-w .` reads as a typo
        mode = stat.S_IMODE(status.st_mode)
        if status.st_uid not in _trusted_owners():
            owner = _user_name(status.st_uid)
            raise TrustError(
                f"{named}, the folder of {path}, belongs to {owner}, not to you"
                f" ({_user_name(os.geteuid())}) or root, so {owner} could replace the file;"
                " keep it in a folder of your own"
            )
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise TrustError(
                f"{named}, the folder of {path}, can be written by others (mode {mode:03o}), so"
                f" anyone could replace the file; run `chmod go-w {_quoted(named)}`"
            )


def make_private_folders(folder: Path) -> None:
    """Make FOLDER, and every missing folder above it, open to its owner only, whatever the
    umask; a folder that exists keeps its mode."""
    # Not mkdir(parents=True): it makes the folders above with the umask's mode, 777 under
    # `umask 000`, and a folder above that others may write lets them replace the one below.
    missing = []
    for above in [Path(folder), *Path(folder).parents]:
        if above.exists():
            break
        missing.append(above)
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by a rival in the meantime
            new.mkdir(mode=PRIVATE_FOLDER_MODE)


def _kind(secret: bool) -> str:
    return "a private key" if secret else "a list of keys"


def _trusted_owners() -> set[int]:
    return {os.geteuid(), 0}


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no account here
        return f"user {uid}"


def _quoted(path: Path) -> str:
    return shlex.quote(str(path))
