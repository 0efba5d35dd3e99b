"""A run over a slow, lossy network: the server and both clients each in a network namespace of
their own, joined through a fourth by lossy_link.py, which delays every frame 50±10 ms and loses
1% of them. Needs root, `ip` and AF_PACKET sockets; skipped, saying why, without them."""

import re
import signal
import subprocess
import sys

import pandas as pd
import pytest
from namespaces import ADDRESSES, Network, why_namespaces_cannot_be_made
from processes import ROOT, WAIT_S, run_blockchain_cli

from fedchain.cli.console import port_from_listening_line

ROUNDS = 10
LINK = "tests/federation/lossy_link.py"


@pytest.fixture
def network(tmp_path):
    """The namespaces, their veth links and the relay between them; all removed at the end."""
    if reason := why_namespaces_cannot_be_made():
        pytest.skip(reason)
    network = Network(tmp_path)
    try:
        network.make()
        relay = network.start("router", LINK, "relay", *(f"to-{role}" for role in ADDRESSES))
        relay.wait_for(r"^relaying ", timeout_s=10)
        network.relay = relay
        yield network
    finally:
        network.remove()


def in_namespace(namespace: str, script: str, *args) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS...` inside NAMESPACE to completion."""
    return subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, ROOT / script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def relay_counts(line: str) -> dict[str, int]:
    """The relay's counts from its line `HEADING: NAME COUNT, NAME COUNT, ...`."""
    pairs = [item.rsplit(" ", 1) for item in line.split(": ", 1)[1].split(", ")]
    return {name: int(count) for name, count in pairs}


def test_a_run_over_a_delaying_lossy_network_completes_with_a_valid_chain(network, tmp_path):
    # First the link itself: a thousand echoes cross it twice each.
    pinged = in_namespace(network.namespace("cli1"), LINK, "ping", ADDRESSES["srv"])
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    ping = re.search(r"(\d+) lost; rtt min ([\d.]+) ms", pinged.stdout)
    lost, min_rtt_ms = int(ping[1]), float(ping[2])
    assert 0 < lost < 100, pinged.stdout  # 2% expected; none lost: a 2-in-10^9 chance
    assert min_rtt_ms >= 80, pinged.stdout  # at least 40 ms each way
    # Then TCP across it: 2 MB is some 1,400 segments, so it loses some and sends them again.
    sink = network.start("srv", LINK, "sink", ADDRESSES["srv"])
    sink_port = port_from_listening_line(sink.wait_for(r"^listening on ").string)
    sent = in_namespace(network.namespace("cli1"), LINK, "send", ADDRESSES["srv"], sink_port)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sink.finish() == 0 and "received 2000000 bytes" in sink.output, sink.output
    bulk_retransmitted = network.tcp_retransmissions("cli1")
    assert bulk_retransmitted > 0  # none lost among 1,400: a 1-in-10^6 chance
    network.relay.process.send_signal(signal.SIGUSR1)  # the relay counts the run afresh
    network.relay.wait_for(r"^so far held: ")
    before = {role: network.tcp_retransmissions(role) for role in ADDRESSES}

    chain = tmp_path / "chain.jsonl"
    server = network.start(
        "srv",
        "server.py",
        "--host",
        ADDRESSES["srv"],
        "--port",
        "0",
        "--chain",
        chain,
        "--difficulty",
        "8",
        "--rounds",
        ROUNDS,
    )
    port = port_from_listening_line(server.wait_for(r"^listening on ", timeout_s=30).string)
    clients = [
        network.start(
            name,
            f"client{name[-1]}.py",
            "--host",
            ADDRESSES["srv"],
            "--port",
            port,
            "--replica",
            tmp_path / f"{name}.jsonl",
        )
        for name in ("cli1", "cli2")
    ]
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    verified = run_blockchain_cli("verify", chain)
    complete = f"valid: {ROUNDS + 2} blocks; the run is complete ({ROUNDS} of {ROUNDS} rounds)"
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[-1] == complete
    for name in ("cli1", "cli2"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain.read_bytes()

    rounds_ms = list(1000 * pd.read_csv(chain.with_name("chain.metrics.csv"))["round_s"])
    assert len(rounds_ms) == 2 * ROUNDS and min(rounds_ms) >= 80, rounds_ms  # there and back

    network.relay.process.terminate()
    assert network.relay.finish() == 0, network.relay.output
    counts = relay_counts(
        next(line for line in network.relay.lines if line.startswith("relayed: "))
    )
    held = next(line for line in network.relay.lines if line.startswith("relayed held: "))
    assert counts["segmentation offloads"] == 0 and counts["send errors"] == 0, counts
    retransmitted = {role: network.tcp_retransmissions(role) - before[role] for role in ADDRESSES}
    print(f"\n{pinged.stdout.strip()}; 2 MB over TCP: {bulk_retransmitted} segments sent again")
    print(f"the run: {counts}; {held}")
    print(f"segments TCP sent again: {retransmitted}; rounds {min(rounds_ms)}-{max(rounds_ms)} ms")
