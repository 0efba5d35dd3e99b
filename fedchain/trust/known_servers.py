"""A client's record of the key each server presented the first time, as SSH's known_hosts: one
`HOST:PORT HEX` a line (keyfile.py has the format). A later, different key is refused, because
that is what a machine in the middle looks like.
"""

import errno
import os
from pathlib import Path

from fedchain.checks import describe
from fedchain.files import fsync_directory
from fedchain.trust.errors import TrustError
from fedchain.trust.keyfile import line_error, read_key_lines
from fedchain.trust.keys import check_public_hex
from fedchain.trust.strict_modes import check_folder_of, check_trust_file, make_private_folders

MAX_PORT = 65_535


class ServerKeyChanged(TrustError):
    """A server presented another key than the one recorded or pinned for its address."""

    def __init__(
        self,
        address: str,
        expected_hex: str,
        presented_hex: str,
        *,
        path: Path | None = None,
        line: int | None = None,
    ) -> None:
        self.address, self.path, self.line = address, path, line
        self.expected_hex, self.presented_hex = expected_hex, presented_hex
        recorded = f"{path} (line {line}) records" if path else "the pinned key is"
        remedy = (
            f"delete line {line} of {path} and connect again"
            if path
            else "pin the new key instead, after checking it with the server's operator"
        )
        super().__init__(
            f"the server at {address} presented the key {presented_hex}, but {recorded}"
            f" {expected_hex}. Someone may be intercepting the connection. If you know the"
            f" server's key changed, {remedy}."
        )


def check_address(text: object) -> str:
    """TEXT as HOST:PORT in lower case, the form the file holds, if it is one."""
    if not isinstance(text, str):
        raise TypeError(f"a server address must be a string, not {describe(text)}")
    host, _, port = text.rpartition(":")
    # Digits only: int() would also take '+1', ' 1' and '1_0', each a new spelling of a port.
    if (
        not host
        or not host.isprintable()
        or any(c.isspace() or c == "#" for c in host)  # the file would read it as a comment
        or not (port.isascii() and port.isdigit() and 0 < int(port) <= MAX_PORT)
    ):
        raise TrustError(f"a server address must be HOST:PORT, not {describe(text)}")
    return f"{host.lower()}:{int(port)}"


class KnownServers:
    """The known-servers file at PATH, read afresh on every call: other clients add to it too."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def check(self, address: str, presented_hex: str) -> bool:
        """True if ADDRESS is known with PRESENTED_HEX, False if unknown; else ServerKeyChanged."""
        address, presented = check_address(address), check_public_hex(presented_hex)
        known = self._entries().get(address)
        if known is None:
            return False
        expected, line = known
        if expected != presented:
            raise ServerKeyChanged(address, expected, presented, path=self.path, line=line)
        return True

    def check_file(self) -> None:
        """Refuse now what check() and remember() would refuse later: a file or a folder others
        could change, or a bad line."""
        if self.path.exists():
            self._entries()
        else:
            check_folder_of(self.path)

    def remember(self, address: str, public_hex: str) -> None:
        """Record PUBLIC_HEX as ADDRESS's key, on disk before this returns."""
        # check() first: the file may have gained this address since the caller looked.
        if self.check(address, public_hex):
            return
        entry = f"{check_address(address)} {check_public_hex(public_hex)}\n".encode()
        check_folder_of(self.path)
        make_private_folders(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd, created = os.open(self.path, os.O_RDWR | os.O_APPEND), False
        try:
            if not created:  # another client may have made it since check() read it
                check_trust_file(self.path, opened=fd)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                entry = b"\n" + entry  # a last line someone saved without its newline
            # One write of a whole line in append mode: other clients appending at the same
            # time cannot land inside it.
            if os.write(fd, entry) != len(entry):
                raise OSError(f"{self.path}: only part of its last line was written; remove it")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(self.path.parent)

    def servers(self) -> dict[str, str]:
        """Each address the file records, with its key; FileNotFoundError if there is no file
        (a client starts without one, but a reader who names the file expects it)."""
        entries = self._entries()
        if not entries and not self.path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.path))
        return {address: key for address, (key, _) in entries.items()}

    def _entries(self) -> dict[str, tuple[str, int]]:
        """Each address's key and line; TrustError for a bad line or an address with two keys."""
        try:
            lines = read_key_lines(self.path)
        except FileNotFoundError:
            return {}
        entries: dict[str, tuple[str, int]] = {}
        for number, label, key in lines:
            try:
                address = check_address(label)
            except TrustError as error:
                raise line_error(self.path, number, str(error)) from None
            first = entries.setdefault(address, (key, number))
            # The same line twice is harmless (two clients remembering at once); two keys
            # for one address would make check() depend on which line it read.
            if first[0] != key:
                raise line_error(
                    self.path,
                    number,
                    f"{address} already has another key on line {first[1]}; remove the wrong line",
                )
        return entries
