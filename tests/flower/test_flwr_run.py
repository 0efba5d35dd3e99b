"""`flwr run . --stream` from a checkout, as docs/flower.md says: Flower's own command line
builds the app from pyproject.toml, starts its local SuperLink (detached: the test stops it and
everything it started) and runs the simulation, which writes a chain that verifies."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from in_process import run_main
from processes import ROOT
from services import free_port

from fedchain.ledger.store import load_chain

WAIT_S = 300
# flwr starts flower-superlink by name: this environment's, as `make test` runs no activate.
BIN = Path(sys.executable).parent


def listener_pid(port: int) -> int | None:
    """The process listening on PORT on loopback, if any (from `ss`)."""
    shown = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    for part in shown.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


@pytest.fixture
def flower_home(tmp_path):
    """A FLWR_HOME of the test's own with the local connection, on a port of its own; the
    detached SuperLink `flwr run` starts there is stopped, with its whole session, at the end."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    port = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    yield env
    pid = listener_pid(port)
    if pid is not None:
        with_session = os.getsid(pid)
        os.killpg(with_session, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while listener_pid(port) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if listener_pid(port) is not None:
            os.killpg(with_session, signal.SIGKILL)
    assert listener_pid(port) is None


def test_flwr_run_from_the_checkout_writes_a_chain_that_verifies(tmp_path, flower_home):
    chain = tmp_path / "chain.jsonl"
    config = (
        f"rounds=2 difficulty=8 chain='{chain}' replicas='{tmp_path / 'replicas'}' "
        f"keys='{tmp_path / 'keys'}' key='{tmp_path / 'keys' / 'server.key'}' "
        f"data='{ROOT / 'data'}' test='{ROOT / 'data' / 'test.csv'}'"
    )
    ran = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "local", "--stream", "--run-config", config],
        env=flower_home,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    assert "valid: 4 blocks; the run is complete (2 of 2 rounds)" in output
    assert [b.cli for b in load_chain(chain).blocks[1:3]] == [("cli1", "cli2")] * 2
    verified = run_main("blockchain.py", "verify", chain)
    assert verified.returncode == 0, verified.stdout + verified.stderr
