"""The server's list of admitted clients: one `NAME HEX` a line (keyfile.py has the format).

Each name and each key appears once. A name listed twice would leave the admitted key to the
order of lines; a key listed under two names would let one participant send two updates and be
averaged in twice, and its signatures would not say which name signed. Both are refused.
"""

from pathlib import Path

from fedchain.checks import check_name, describe
from fedchain.trust.keyfile import line_error, read_key_lines


def load_authorized_keys(path: Path) -> dict[str, str]:
    """Each admitted client's name and public key (64 lowercase hex digits) from PATH."""
    keys: dict[str, str] = {}
    name_line: dict[str, int] = {}
    key_line: dict[str, tuple[int, str]] = {}
    for number, name, key in read_key_lines(path):
        try:
            check_name(name, "the client name")
        except (TypeError, ValueError) as error:
            raise line_error(path, number, str(error)) from None
        if name in name_line:
            raise line_error(
                path, number, f"{describe(name)} is already listed on line {name_line[name]}"
            )
        if key in key_line:
            first, other = key_line[key]
            raise line_error(
                path,
                number,
                f"the key of {describe(name)} is already listed for {describe(other)} on line"
                f" {first}; every client needs its own key",
            )
        keys[name] = key
        name_line[name] = number
        key_line[key] = (number, name)
    return keys  # empty for a file with no entries: the caller decides what that means
