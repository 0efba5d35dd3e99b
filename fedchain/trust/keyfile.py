"""The line format of the authorized-keys and known-servers files: `LABEL HEX` one a line, `#`
comments, blank lines; every fault names the file and the line. Both decide whom to trust, so
they are read only if nobody but their owner could have changed them.

A `#` starts a comment at the start of a line or after a space, so `team#1 HEX` lists the name
`team#1`. The key is the last field, so a name may hold spaces inside it (`Zoë Li HEX`).
"""

import re
from pathlib import Path
from typing import NamedTuple

from fedchain.checks import printable
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import check_public_hex
from fedchain.trust.strict_modes import read_trust_file

_COMMENT = re.compile(r"(?:^|\s)#.*")


class KeyLine(NamedTuple):
    number: int  # from 1, as an editor counts
    label: str  # a client's name or a server's address, for the caller to check
    public_hex: str  # lowercase


def read_key_lines(path: Path) -> list[KeyLine]:
    """Every entry of PATH in order; TrustError naming the file and line of the first bad one,
    or saying what to run if others could have changed the file (strict_modes.py)."""
    data = read_trust_file(path)
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark some editors add is no name
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TrustError(f"{path}: line {line}: not UTF-8 text") from None
    entries = []
    # split("\n"), not splitlines(): line numbers must match an editor's, and splitlines()
    # also breaks at form feeds and other separators editors show inside a line.
    for number, line in enumerate(text.split("\n"), start=1):
        content = _COMMENT.sub("", line).strip()
        if not content:
            continue
        fields = content.rsplit(None, 1)
        if len(fields) != 2:
            raise line_error(
                path, number, f"expected a label and a 64-hex-digit key, not {printable(content)}"
            )
        try:
            key = check_public_hex(fields[1], "the key")
        except TrustError as error:
            raise line_error(path, number, str(error)) from None
        entries.append(KeyLine(number, fields[0], key))
    return entries


def line_error(path: Path, number: int, reason: str) -> TrustError:
    """A TrustError that names PATH and line NUMBER."""
    return TrustError(f"{path}: line {number}: {reason}")
