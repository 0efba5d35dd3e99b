"""docs/operations.md's "Running on two real machines", step by step: the server and two clients
each a machine of their own (a network namespace with its own address, joined by a bridge), the
keys exchanged by reading --show-key. Needs root and `ip`; skipped, saying why, without them."""

import re
from pathlib import Path

import pytest
from namespaces import ADDRESSES, Network, ip, why_namespaces_cannot_be_made
from processes import ROOT, run_script

GUIDE = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
CLIENTS = ("cli1", "cli2")
RUN = ("--rounds", "2", "--difficulty", "8")  # a short run: step 4 says such flags go there


def guide_says(command: str) -> str:
    """COMMAND, after checking the guide gives it as written."""
    section = GUIDE[GUIDE.index("## Running on two real machines") :]
    assert f"\n   {command}\n" in section, f"the guide no longer says `{command}`"
    return command


@pytest.fixture
def machines(tmp_path):
    """Namespaces srv, cli1 and cli2, each on a veth to a bridge; all removed at the end."""
    if reason := why_namespaces_cannot_be_made():
        pytest.skip(reason)
    network = Network(tmp_path)
    try:
        network.make()
        router = network.namespace("router")
        for command in (
            ["link", "add", "br0", "type", "bridge"],
            ["link", "set", "br0", "up"],
            *(["link", "set", f"to-{role}", "master", "br0"] for role in ADDRESSES),
        ):
            done = ip("-n", router, *command)
            assert done.returncode == 0, f"ip {' '.join(command)}: {done.stderr}"
        for role in ADDRESSES:
            (tmp_path / role).mkdir()
        yield network
    finally:
        network.remove()


def shown_key(folder: Path, command: str) -> str:
    """Run a guide's `python SCRIPT ... --show-key` in FOLDER; the key it printed."""
    script, *args = command.split()[1:]
    shown = run_script(script, *args, cwd=folder)
    assert shown.returncode == 0, shown.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", shown.stdout), shown.stdout
    return shown.stdout.strip()


def test_the_two_machine_guide_completes_a_run_with_a_verified_chain(machines, tmp_path):
    srv = tmp_path / "srv"
    # Steps 1 and 2: the keys, read off each machine and carried to the others.
    server_key = shown_key(srv, guide_says("python server.py --show-key"))
    show_client = guide_says("python client.py --name NAME --show-key")
    authorized = srv / "authorized_keys"
    authorized.write_text(
        "".join(
            f"{name} {shown_key(tmp_path / name, show_client.replace('NAME', name))}\n"
            for name in CLIENTS
        )
    )
    # Step 4: the server on every address, the default port (its namespace has it free).
    serve = guide_says("python server.py --host 0.0.0.0 --authorized-keys authorized_keys")
    server = machines.start("srv", *serve.split()[1:], *RUN, cwd=srv)
    server.wait_for(r"^listening on 0\.0\.0\.0:10000$", timeout_s=30)
    # Step 5: each client from its own machine, the server's address and key pinned.
    join = guide_says("python client.py --host SERVER --server-key HEX --name NAME --data rows.csv")
    clients = []
    for name in CLIENTS:
        rows = ROOT / "data" / f"client{name[-1]}.csv"
        command = (
            join.replace("SERVER", ADDRESSES["srv"])
            .replace("HEX", server_key)
            .replace("NAME", name)
            .replace("rows.csv", str(rows))
        )
        clients.append(machines.start(name, *command.split()[1:], cwd=tmp_path / name))
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    # Step 6: the server's chain verifies as signed by the key the clients pinned.
    (chain,) = srv.glob("runs/*/chain.jsonl")
    verify = guide_says("python blockchain.py verify chain.jsonl --server-key HEX")
    command = verify.replace("chain.jsonl", str(chain)).replace("HEX", server_key)
    verified = run_script(*command.split()[1:])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[-1] == (
        "valid: 4 blocks; the run is complete (2 of 2 rounds)"
    )
    for name in CLIENTS:
        (replica,) = (tmp_path / name).glob("replicas/*.jsonl")
        assert replica.read_bytes() == chain.read_bytes()
