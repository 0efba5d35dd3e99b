"""What the programs print for people, and the one line other programs read back: the server's
first line names the port it listens on, so a test or the demo can start it on port 0."""

import os
import re
import sys
from collections.abc import Callable

from fedchain.checks import printable

MAX_SHOWN_CHARS = 1000  # an error line: enough for two keys and a path, not a peer's megabytes

_LISTENING = re.compile(r"^listening on (?P<host>\S+):(?P<port>\d+)$")


def say(line: str) -> None:
    """Print LINE for the person at the terminal, at once (they may be watching a long run)."""
    print(line, flush=True)


def listening_line(host: str, port: int) -> str:
    """The server's first line."""
    return f"listening on {host}:{port}"


def port_from_listening_line(line: str) -> int | None:
    """The port in the server's first line, or None if LINE is not that line."""
    match = _LISTENING.match(line.strip())
    return int(match["port"]) if match else None


def shown(error: BaseException) -> str:
    """An error as one bounded, escaped line: its text may quote what a peer or a file held."""
    return printable(str(error), limit=MAX_SHOWN_CHARS)


def quiet_on_broken_pipe(main: Callable[[], int]) -> int:
    """Run MAIN; if whoever reads our output goes away (`| head`), stop quietly, as cat does."""
    try:
        return main()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
