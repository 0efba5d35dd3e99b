"""Bad frames and bad updates sent to a running server: each is refused with a clear reason,
nothing they carry runs, the server keeps serving or stops cleanly, and the chain stays valid."""

import os
import pickle
import socket

import numpy as np
import pytest
from processes import ROOT, run_blockchain_cli, start_server
from wire_helpers import Exploit, frame, receive

from fedchain.learning.dataset import load_dataset
from fedchain.wire.frames import HEADER, MAGIC, VERSION, send_message

FEATURES = list(load_dataset(ROOT / "data" / "client1.csv").feature_names)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def test_bad_frames_are_refused_and_the_run_goes_on(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "2")
    target = tmp_path / "created-by-pickle"
    attempts = {
        "garbage": (b"GET / HTTP/1.1\r\n\r\n", "not a frame of this protocol"),
        "oversized": (HEADER.pack(MAGIC, VERSION, 2**31), "over the limit"),
        "exploit": (
            frame(
                pickle.dumps(
                    {"type": "register", "name": Exploit(os.system, f"touch {target}")}, protocol=5
                )
            ),
            "posix.system, which is not allowed",
        ),
        "unknown type": (frame(pickle.dumps({"type": "hello"}, protocol=5)), "unknown message"),
        "update first": (
            frame(
                pickle.dumps(
                    {
                        "type": "update",
                        "round": 1,
                        "weights": np.zeros(12),
                        "bias": 0.0,
                        "n_samples": 5,
                        "metrics": {},
                    },
                    protocol=5,
                )
            ),
            "expected a register message first",
        ),
    }
    for label, (data, expected) in attempts.items():
        with connect(port) as sock:
            sock.sendall(data)
            reply = receive(sock)
        assert reply["type"] == "refused", label
        assert expected in reply["reason"], (label, reply)
        server.wait_for(f"refused 127.0.0.1:\\d+: .*{expected}")
    assert not target.exists()
    # A peer that connects and then vanishes mid-frame is dropped without harm, too.
    with connect(port) as sock:
        sock.sendall(HEADER.pack(MAGIC, VERSION, 100) + b"partial")
    server.wait_for("dropped 127.0.0.1")

    clients = [
        programs("client1.py", "--port", port, "--replica", tmp_path / "cli1.jsonl"),
        programs("client2.py", "--port", port, "--replica", tmp_path / "cli2.jsonl"),
    ]
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    assert "valid: 3 blocks" in server.output
    assert not target.exists()


def join_raw_clients(port: int, *names: str) -> list[socket.socket]:
    """Join as NAMES with the protocol done by hand, up to the first round's global model."""
    socks = []
    for name in names:
        socks.append(connect(port))
        registration = {"name": name, "feature_names": FEATURES, "n_samples": 535}
        send_message(socks[-1], {"type": "register", **registration})
    for sock in socks:
        assert receive(sock)["type"] == "welcome"
        assert receive(sock)["type"] == "train"
    return socks


def update(weights, bias=0.0) -> dict:
    return {"type": "update", "round": 1, "weights": weights, "bias": bias,
            "n_samples": 535, "metrics": {}}  # fmt: skip


@pytest.mark.parametrize(
    ("bad_update", "expected"),
    [
        (
            frame(pickle.dumps(update(np.zeros(3)), protocol=5)),
            "cli2 sent 3 weights for 12 features",
        ),
        (
            frame(pickle.dumps(update(np.full(12, np.nan)), protocol=5)),
            "cli2 sent a bad frame: update message: weights holds NaN or infinity",
        ),
        (
            frame(pickle.dumps({**update(np.zeros(12)), "n_samples": 0}, protocol=5)),
            "cli2 sent a bad frame: update message: n_samples must be a positive integer, not 0",
        ),
        (
            frame(pickle.dumps({**update(np.zeros(12)), "n_samples": 10**6}, protocol=5)),
            "cli2 claims 1000000 rows, but registered 535",
        ),
        (
            frame(pickle.dumps(update(np.full(12, 1e300)), protocol=5)),
            "cli2 sent a bad frame: update message: weights holds a number larger than 1e+100",
        ),
        (None, "cli2 sent no update for round 1 within 3 s (--round-timeout-s)"),
    ],
)
def test_a_bad_update_stops_the_run_cleanly_with_its_reason(
    programs, tmp_path, bad_update, expected
):
    server, port = start_server(programs, tmp_path, "--rounds", "3", "--round-timeout-s", "3")
    # cli1 answers at once, so only cli2 can be to blame, however slow the machine.
    honest, sock = join_raw_clients(port, "cli1", "cli2")
    with honest, sock:
        send_message(honest, update(np.zeros(12)))
        if bad_update is not None:  # None: say nothing, and let the round time out
            sock.sendall(bad_update)
        assert server.finish() == 1, server.output
        reply = receive(sock)
        told = receive(honest)
    assert reply["type"] == "refused" and reply["reason"] == f"run stopped: {expected}"
    assert told == reply  # the honest client is told why the run stopped, too
    assert f"run stopped: {expected}" in server.output
    assert "Traceback" not in server.output
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 0 and result.stdout.strip() == "valid: 1 blocks"


def run_two_clients(programs, tmp_path, port):
    return [
        programs(f"client{i}.py", "--port", port, "--replica", tmp_path / f"cli{i}.jsonl")
        for i in (1, 2)
    ]


def test_a_peer_stuck_mid_frame_holds_up_nobody(programs, tmp_path):
    # The stuck peer would be turned away only after an hour: the run must not wait for that.
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--register-timeout-s", "3600")
    with connect(port) as stuck:
        stuck.sendall(HEADER.pack(MAGIC, VERSION, 100) + b"\x80\x05")  # and then nothing more
        clients = run_two_clients(programs, tmp_path, port)
        for program in [server, *clients]:
            assert program.finish() == 0, program.output
        assert receive(stuck)["reason"] == "the run is full (2 clients)"


def test_a_newcomer_that_never_registers_is_turned_away(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--register-timeout-s", "1")
    with connect(port) as silent:
        server.wait_for(r"refused 127\.0\.0\.1:\d+: no registration within 1 s")
        assert receive(silent)["type"] == "refused"
    for program in [server, *run_two_clients(programs, tmp_path, port)]:
        assert program.finish() == 0, program.output


def test_a_crowd_of_idle_connections_is_capped(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    crowd = [connect(port) for _ in range(32)]
    try:
        with connect(port) as one_too_many:
            assert "too many connections" in receive(one_too_many)["reason"]
    finally:
        for sock in crowd:
            sock.close()
    for program in [server, *run_two_clients(programs, tmp_path, port)]:
        assert program.finish() == 0, program.output


def register(port: int, name: str) -> socket.socket:
    sock = connect(port)
    send_message(
        sock, {"type": "register", "name": name, "feature_names": FEATURES, "n_samples": 9}
    )
    return sock


def test_two_registrations_at_once_for_the_last_place_admit_only_one(programs, tmp_path):
    _, port = start_server(programs, tmp_path, "--clients", "1", "--rounds", "1")
    first, second = register(port, "a"), register(port, "b")  # both, as near at once as can be
    with first, second:
        # With room for one, exactly one is welcomed into the run; the other is turned away
        # (as the run is full, or already under way if it came a moment too late).
        replies = [receive(first), receive(second)]
        assert sorted(r["type"] for r in replies) == ["refused", "welcome"]
        reason = next(r["reason"] for r in replies if r["type"] == "refused")
        assert reason in ("the run is full (1 client)", "a run is in progress with all its clients")


def test_a_client_that_speaks_before_the_run_is_removed(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    with register(port, "chatty") as chatty:
        server.wait_for("chatty joined")
        send_message(chatty, {"type": "done", "blocks": 1})
        assert "may not speak before the run" in receive(chatty)["reason"]
    for program in [server, *run_two_clients(programs, tmp_path, port)]:
        assert program.finish() == 0, program.output


def test_a_newcomer_during_the_run_is_refused_and_the_run_goes_on(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    cli1, cli2 = join_raw_clients(port, "cli1", "cli2")  # round 1 is open until they answer
    with cli1, cli2:
        with register(port, "latecomer") as latecomer:
            assert receive(latecomer)["reason"] == "a run is in progress with all its clients"
        for sock in (cli1, cli2):
            send_message(sock, update(np.zeros(12)))
        for sock in (cli1, cli2):
            assert receive(sock)["type"] == "block"
            assert receive(sock) == {"type": "done", "blocks": 2}
    assert server.finish() == 0, server.output
    assert "Traceback" not in server.output and "valid: 2 blocks" in server.output
