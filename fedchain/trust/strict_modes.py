"""The files that decide whom to trust (private keys, authorized keys, known servers) are read
only if nobody but their owner could have changed them, as OpenSSH's StrictModes: the file and
every folder on the way to it must belong to the user or root and be writable by their owner
alone.

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
MAX_LINKS = 40  # as Linux's own limit on the links one path may pass through


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
    """TrustError, saying what to run, if others may replace PATH: every folder the system
    passes through to reach it (following symbolic links, as opening it does) must belong to
    the user or root and be writable by its owner only, or be sticky; and every link on the way
    must be the user's or root's. A folder not made yet passes: make_private_folders makes it."""
    # As OpenSSH's StrictModes, every folder on the way, not only the last: whoever may write
    # any of them may rename the folder below it and put another in its place.
    path = Path(path)
    folders = _folders_on_the_way(path)
    for number, (folder, status) in enumerate(folders, start=1):
        where = "the folder of" if number == len(folders) else "a folder on the way to"
        mode = stat.S_IMODE(status.st_mode)
        if status.st_uid not in _trusted_owners():
            owner = _user_name(status.st_uid)
            raise TrustError(
                f"{folder}, {where} {path}, belongs to {owner}, not to you"
                f" ({_user_name(os.geteuid())}) or root, so {owner} could replace the file;"
                " keep it in a folder of your own"
            )
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise TrustError(
                f"{folder}, {where} {path}, can be written by others (mode {mode:03o}), so"
                f" anyone could replace the file; run `chmod go-w {_quoted(folder)}`"
            )


def _folders_on_the_way(path: Path) -> list[tuple[Path, os.stat_result]]:
    """The real folders that opening PATH passes through, with their status, from the root
    down to PATH's own (last), or to the first one not made yet; TrustError for a symbolic link
    on the way that someone else made (in a sticky folder anyone may put one there, and Linux
    follows it unless fs.protected_symlinks is set)."""
    folder = Path("/")
    folders = [(folder, os.lstat(folder))]
    # Not resolve() or abspath(): each link must be seen, and `link/..` is the link target's
    # parent, not the link's folder.
    remaining = list((Path.cwd() / path).parts[1:])
    links = 0
    while remaining:
        name = remaining.pop(0)
        if name == "..":
            folder = folder.parent  # a real folder: its parent was checked on the way down
            continue
        entry = folder / name
        try:
            status = os.lstat(entry)
        except (FileNotFoundError, NotADirectoryError):
            break  # not made yet, or not a folder: opening it fails without reading anything
        if stat.S_ISLNK(status.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise TrustError(f"{path}: too many levels of symbolic links")
            if status.st_uid not in _trusted_owners():
                owner = _user_name(status.st_uid)
                raise TrustError(
                    f"{entry}, a symbolic link on the way to {path}, belongs to {owner}, not to"
                    f" you ({_user_name(os.geteuid())}) or root, so {owner} chose where it"
                    " leads; give the real path"
                )
            target = Path(os.readlink(entry))
            if target.is_absolute():
                folder = Path("/")
            remaining[:0] = target.parts[1:] if target.is_absolute() else target.parts
            continue
        if not remaining or not stat.S_ISDIR(status.st_mode):
            break  # PATH itself, which the caller checks; or a file that no path goes through
        folder = entry
        folders.append((folder, status))
    if folders[-1][0] != folder:  # PATH went back up (`..`) to a folder passed on the way
        folders.append((folder, os.lstat(folder)))
    return folders


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
