"""Real programs for the end-to-end tests, read line by line, every wait under a watchdog."""

import os
import queue
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedchain.cli.console import port_from_listening_line

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # a watchdog for every wait: a hang fails the test instead of stalling the suite


class Program:
    """A running program whose merged output is collected line by line."""

    def __init__(
        self,
        script: str,
        *args: str,
        cwd: Path,
        max_file_bytes: int = 0,
        prefix: tuple = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """PREFIX comes before the interpreter: ("ip", "netns", "exec", NS) runs it in NS.
        ENV: variables to set for it, besides this process's own."""
        self.name = script

        def limit_file_size() -> None:  # to play a full disk: writes past it fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-u", str(ROOT / script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=cwd,
            preexec_fn=limit_file_size if max_file_bytes else None,
            env={**os.environ, **env} if env else None,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float = WAIT_S) -> re.Match:
        """Return the match of the first new line matching PATTERN; fail if it never comes."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{self.name} printed no line matching {pattern!r}:\n{self.output}")
            if line is None:
                self._queue.put(None)
                pytest.fail(f"{self.name} ended before printing {pattern!r}:\n{self.output}")
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match

    def finish(self, timeout_s: float = WAIT_S) -> int:
        """Wait for the program to exit, collect the rest of its output, return its exit code."""
        code = self.process.wait(timeout=timeout_s)
        while (line := self._queue.get(timeout=timeout_s)) is not None:
            self.lines.append(line)
        self._queue.put(None)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT_S)


def start_server(start, tmp_path: Path, *args: str, env=None) -> tuple[Program, int]:
    """Start server.py on a free loopback port; return it with the port it printed first."""
    # Below its quorum a server waits for clients to come back; the tests that want that say so.
    server = start(
        "server.py",
        "--port",
        "0",
        "--chain",
        tmp_path / "chain.jsonl",
        "--difficulty",
        "8",
        "--rejoin-timeout-s",
        "1",
        *args,
        env=env,
    )
    first = server.wait_for(r"^listening on ", timeout_s=30).string
    return server, port_from_listening_line(first)


def run_script(script: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS...` to completion and return what it printed."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=cwd,
    )


def run_blockchain_cli(*args) -> subprocess.CompletedProcess:
    """Run `python blockchain.py ARGS...` to completion and return what it printed."""
    return run_script("blockchain.py", *args)
