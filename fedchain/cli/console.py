"""What the programs print for people, and the one line other programs read back: the server's
first line names the port it listens on, so a test or the demo can start it on port 0.

Lines go through Python's logging, as the logger "fedchain": what a person follows to standard
output, warnings and errors to standard error; -q keeps only those, -v adds the details.
"""

import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from fedchain.checks import printable

MAX_SHOWN_CHARS = 1000  # an error line: enough for two keys and a path, not a peer's megabytes

# Each program by the script a checkout runs it as; installed, it is fedchain-PROGRAM.
SCRIPTS = {
    "server": "server.py",
    "client": "client.py",
    "chain": "blockchain.py",
    "model": "model.py",
}
_INSTALLED_PREFIX = "fedchain-"

_LISTENING = re.compile(r"^listening on (?P<host>\S+):(?P<port>\d+)$")


LOG = logging.getLogger("fedchain")


class _Stream(logging.StreamHandler):
    """A terminal stream whose reader going away (`| head`) stops the program, as it would
    stop print(), instead of being reported by logging and ignored."""

    def handleError(self, record: logging.LogRecord) -> None:  # logging names it so
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            raise  # it is handled inside the handler's own except block: re-raised
        super().handleError(record)


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def configure_output(*, quiet: bool = False, verbose: bool = False) -> None:
    """Send the program's lines to the terminal: -q (QUIET) only warnings and errors, -v
    (VERBOSE) every detail too."""
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
    plain = logging.Formatter("%(message)s")
    to_stdout = _Stream(sys.stdout)
    to_stdout.addFilter(_Below(logging.WARNING))
    to_stderr = _Stream(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    for handler in (to_stdout, to_stderr):
        handler.setFormatter(plain)
        LOG.addHandler(handler)
    LOG.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    LOG.propagate = False


def say(line: str) -> None:
    """Print LINE for the person at the terminal, at once (they may be watching a long run)."""
    if not LOG.handlers:  # used before a program set its output up: the default
        configure_output()
    LOG.info(line)


def warn(line: str) -> None:
    """A line that matters even under -q: to standard error."""
    if not LOG.handlers:
        configure_output()
    LOG.warning(line)


def detail(line: str) -> None:
    """A line only -v shows."""
    if not LOG.handlers:
        configure_output()
    LOG.debug(line)


def announce(line: str) -> None:
    """A line printed whatever -q says: one other programs read back (the listening line)."""
    print(line, flush=True)


def command_for(program: str) -> str:
    """How to start PROGRAM (a key of SCRIPTS), the way this process was started: `fedchain-chain`
    when installed, `python -m fedchain.cli.chain` as a module, else `python blockchain.py` (with
    the folder the running script was started from), so a hint names what works here."""
    started = Path(sys.argv[0] if sys.argv and sys.argv[0] else "")
    if started.name.startswith(_INSTALLED_PREFIX):
        return f"{_INSTALLED_PREFIX}{program}"
    if started.parent.name == "cli" and started.parent.parent.name == "fedchain":
        return f"python -m fedchain.cli.{program}"
    return (
        f"python {shlex.quote(str(started.parent / SCRIPTS[program]))}"  # a folder may hold spaces
    )


def new_key_note(path: object) -> str:
    """What --show-key says on standard error when it had to make the key it prints: a key
    printed from the wrong folder would be sent to whoever must trust it."""
    return (
        f"note: there was no key at {path}, so a new one was made there; if you meant an "
        "existing key, run this from its folder or give its --key"
    )


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
