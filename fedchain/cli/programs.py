"""Start this project's programs as separate processes, as the demo and the benchmark do, and
read the server's port back from its first line."""

import os
import subprocess
import sys
from pathlib import Path

from fedchain.cli.console import port_from_listening_line

# The folder that holds the fedchain package, so `-m fedchain...` works from any directory.
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def start_program(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Run `python -m MODULE ARGS...` in CWD with its output (stdout and stderr) on a pipe."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-u", "-m", module, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env=env,
    )


def start_server(*args: str, cwd: Path) -> tuple[subprocess.Popen, int | None, str]:
    """Start the server; return it, the port its first line names (None if it failed) and
    that first line."""
    server = start_program("fedchain.cli.server", *args, cwd=cwd)
    first = server.stdout.readline()
    return server, port_from_listening_line(first), first


def start_client(name: str, data: Path, *args: str, cwd: Path) -> subprocess.Popen:
    """Start a client named NAME on the rows in DATA."""
    return start_program("fedchain.cli.client", "--name", name, "--data", data, *args, cwd=cwd)
