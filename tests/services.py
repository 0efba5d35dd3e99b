"""Long-running programs for the tests, each in a session of its own, read through its log,
and stopped with everything it started: a program that starts others (Flower's SuperLink and
SuperNodes start SuperExecs, which start a process per run or message, some in sessions of
their own) leaves nothing behind."""

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path

WAIT_S = 60.0  # a watchdog for every wait
POLL_S = 0.05
STOP_S = 15.0  # how long a stopped process may take before it is killed


def free_port() -> int:
    """A loopback port free a moment ago, for a program that cannot take port 0 and say which
    port it got: the caller may lose a race for it, and must retry on a bind failure."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A long-running program, its output going to LOG (read back to see how it is), in a
    session of its own so that it and what it starts can be stopped together."""

    def __init__(self, name: str, args: list[str], *, log: Path, env: Mapping[str, str]) -> None:
        self.name, self.log, self.ports = name, log, []
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = WAIT_S) -> re.Match | None:
        """The first match of PATTERN in the output; None if the program ended without it.
        Raises TimeoutError if it neither prints it nor ends in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ended = self.process.poll() is not None  # before reading: no line is missed
            if match := re.search(pattern, self.output, re.MULTILINE):
                return match
            if ended:
                return None
            time.sleep(POLL_S)
        raise TimeoutError(f"{self.name} printed nothing matching {pattern!r}:\n{self.output}")

    def wait_exit(self, timeout_s: float = WAIT_S) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Stop the program and everything it started; kill what outlives STOP_S. Raises
        RuntimeError if any of it is still running after that."""
        # Listed before any of it ends: an orphan is adopted by init and leaves the family.
        family = [self.process.pid, *_descendants(self.process.pid)]
        groups = {fields[2] for pid in family if (fields := _stat(pid)) is not None}
        for group in groups:
            with suppress(ProcessLookupError):  # the group has ended already
                os.killpg(int(group), signal.SIGTERM)
        for pid in self._wait_gone(groups):  # by pid: an ended group may be another's now
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = self._wait_gone(groups)
        self.process.wait(timeout=WAIT_S)
        if left:
            raise RuntimeError(f"{self.name}: processes {left} outlived SIGKILL")

    def _wait_gone(self, groups: set[str]) -> list[int]:
        """Wait up to STOP_S for GROUPS to end; what still runs."""
        deadline = time.monotonic() + STOP_S
        while (left := _members(groups)) and time.monotonic() < deadline:
            self.process.poll()  # our own child: reaped, not left a zombie
            time.sleep(POLL_S)
        return left


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command (state, ppid, pgrp, …); None if it's gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            yield int(entry.name), fields


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, fields in _processes():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _members(groups: set[str]) -> list[int]:
    """The running processes of GROUPS, also any started after the family was listed (a
    zombie has ended: only its parent's wait is missing)."""
    return [pid for pid, fields in _processes() if fields[2] in groups and fields[0] != "Z"]
