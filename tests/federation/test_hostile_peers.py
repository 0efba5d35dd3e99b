"""Bad frames, bad logins and bad updates sent to a running server: each is refused with a clear
reason, nothing they carry runs, the server keeps serving or stops cleanly, and the chain stays
valid. The rules a message is judged by are the protocol's, unit-tested in test_protocol_*.py;
these tests keep to what only a live server shows: bytes, TLS, frames, newcomers, deadlines."""

import os
import pickle
import socket
import struct

import numpy as np
import pytest
from chain_helpers import fixed_key
from processes import run_blockchain_cli, start_server
from raw_peers import RawClient, connect, join_raw_clients, write_key
from wire_helpers import Exploit, frame, receive

from fedchain.ledger.store import block_from_json
from fedchain.trust.keys import public_hex
from fedchain.wire.frames import HEADER, MAGIC, VERSION


def run_two_clients(programs, tmp_path, port, *extra):
    return [
        programs(f"client{i}.py", "--port", port, "--replica", tmp_path / f"cli{i}.jsonl", *extra)
        for i in (1, 2)
    ]


def finish_cleanly(server, clients, rounds: int) -> None:
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    assert server.output.rstrip().endswith(f"({rounds} of {rounds} rounds)")
    assert "Traceback" not in server.output


def test_bad_frames_inside_tls_are_refused_and_the_run_goes_on(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "2")
    target = tmp_path / "created-by-pickle"
    exploit = {"type": "register", "name": Exploit(os.system, f"touch {target}")}
    early_update = {
        "type": "update",
        "round": 1,
        "weights": np.zeros(12),
        "bias": 0.0,
        "n_samples": 5,
        "metrics": {},
    }
    attempts = {
        "garbage": (b"GET / HTTP/1.1\r\n\r\n", "not a frame of this protocol"),
        "oversized": (HEADER.pack(MAGIC, VERSION, 2**31), "over the limit"),
        "exploit": (frame(pickle.dumps(exploit, protocol=5)), "posix.system, which is not allowed"),
        "unknown type": (frame(pickle.dumps({"type": "hello"}, protocol=5)), "unknown message"),
        "update first": (frame(pickle.dumps(early_update, protocol=5)), "lacks"),
    }
    for label, (data, expected) in attempts.items():
        with RawClient(port, "x") as peer:
            peer.sock.sendall(data)
            reply = receive(peer.sock)
        assert reply["type"] == "refused", label
        assert expected in reply["reason"], (label, reply)
        server.wait_for(f"refused 127.0.0.1:\\d+: .*{expected}")
    assert not target.exists()
    # A peer that vanishes mid-frame is dropped without harm, too.
    with RawClient(port, "x") as peer:
        peer.sock.sendall(HEADER.pack(MAGIC, VERSION, 100) + b"partial")
    server.wait_for("dropped 127.0.0.1")
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=2)
    assert not target.exists()


def test_a_plaintext_peer_is_dropped_and_the_run_goes_on(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    with connect(port) as plain:
        plain.sendall(frame(pickle.dumps({"type": "hello"}, protocol=5)))
        server.wait_for(r"dropped 127\.0\.0\.1:\d+: no TLS 1\.3 handshake")
        try:  # at most a TLS alert comes back, never a message in plain text
            answer = plain.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer.startswith(b"\x15\x03")
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def test_a_login_replayed_from_another_connection_is_refused(programs, tmp_path):
    # Each connection gets its own challenge (the protocol's unit tests check the login's
    # other faults): a login recorded on one does not verify on the next.
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    with RawClient(port, "x") as first:
        recorded = first.challenge
    with RawClient(port, "x") as peer:
        assert peer.challenge != recorded
        peer.register(challenge=recorded)
        reply = receive(peer.sock)
    assert reply["type"] == "refused"
    assert reply["reason"].startswith("x's login signature does not verify")
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def test_authorized_keys_admit_only_the_listed_names_with_their_keys(programs, tmp_path):
    keys = {name: fixed_key(name) for name in ("cli1", "cli2")}
    listed = tmp_path / "authorized"
    listed.write_text("".join(f"{n} {public_hex(k)}\n" for n, k in keys.items()))
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--authorized-keys", listed)
    with RawClient(port, "mallory") as stranger:
        stranger.register()
        assert receive(stranger.sock)["reason"] == "'mallory' is not in the authorized keys"
    with RawClient(port, "cli1", key=fixed_key("not cli1's")) as impostor:
        impostor.register()
        assert "cli1's key" in receive(impostor.sock)["reason"]
    # The real clients use the listed keys, written where client.py looks for them.
    (tmp_path / "keys").mkdir(exist_ok=True)
    for name, key in keys.items():
        write_key(tmp_path / "keys" / f"{name}.key", key)
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def update_with(client: RawClient, sent: dict | None = None, **signing) -> bytes:
    """A framed update signed as SIGNING says, with the fields in SENT changed after signing."""
    return frame(pickle.dumps({**client.update(**signing), **(sent or {})}, protocol=5))


# The transport's part in a bad update: a frame the reader refuses, and a round's deadline. The
# protocol's unit tests (test_protocol_rounds.py) send every other bad update.
BAD_UPDATES = {
    "NaN": (
        lambda c: update_with(c, {"weights": np.full(12, np.nan)}),
        "sent a bad frame: update message: weights holds NaN or infinity",
    ),
    "silent": (None, "sent no update within 1 s (--round-timeout-s)"),
}


@pytest.mark.parametrize("bad", sorted(BAD_UPDATES))
def test_a_bad_update_stops_the_run_cleanly_with_its_reason(programs, tmp_path, bad):
    make, expected = BAD_UPDATES[bad]
    server, port = start_server(programs, tmp_path, "--rounds", "3", "--round-timeout-s", "1")
    # cli1 answers at once, so only cli2 can be to blame, however slow the machine.
    honest, suspect = join_raw_clients(port, "cli1", "cli2")
    with honest, suspect:
        honest.send(honest.update())
        if make is not None:  # None: say nothing, and let the round time out
            suspect.sock.sendall(make(suspect))
        assert server.finish() == 1, server.output
        reply, told = receive(suspect.sock), receive(honest.sock)
        # The honest client is told what the round waits for, then why the run stopped: too
        # few clients are left for the round, and none came back.
        assert told["type"] == "waiting" and "has 1 of the 2 updates it needs" in told["reason"]
        while told["type"] == "waiting":
            told = receive(honest.sock)
    assert reply == {"type": "refused", "reason": f"left out: {expected}"}
    assert told["type"] == "refused" and told["reason"].startswith(
        "run stopped: round 1 cannot go on with 1 of the 2 clients it needs (--min-clients); "
        f"none came back within 1 s (--rejoin-timeout-s): cli2 {expected} (round 1)"
    )
    assert f"cli2 is left out of the run: {expected}" in server.output
    assert "Traceback" not in server.output
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 3 and "incomplete: 1 block verifies" in result.stdout


def test_a_peer_stuck_mid_frame_holds_up_nobody(programs, tmp_path):
    # The stuck peer would be turned away only after an hour: the run must not wait for that.
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--register-timeout-s", "3600")
    with RawClient(port, "stuck") as stuck:
        stuck.sock.sendall(HEADER.pack(MAGIC, VERSION, 100) + b"\x80\x05")  # and then nothing
        finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)
        assert receive(stuck.sock)["reason"] == "the run is full (2 clients)"


def test_a_peer_stuck_in_the_tls_handshake_holds_up_nobody(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--register-timeout-s", "3600")
    with connect(port) as stuck:
        stuck.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and then nothing
        finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def test_a_newcomer_that_never_registers_is_turned_away(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--register-timeout-s", "1")
    with RawClient(port, "silent") as silent:
        server.wait_for(r"refused 127\.0\.0\.1:\d+: no registration within 1 s")
        assert receive(silent.sock)["type"] == "refused"
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def test_a_crowd_of_idle_connections_cannot_lock_honest_clients_out(programs, tmp_path):
    # 32 sockets that never start TLS fill the newcomers' queue; the server sheds the oldest of
    # them to make room, so the honest clients get in and finish well inside the 10 s in which
    # the crowd would otherwise hold the queue.
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    crowd = [connect(port) for _ in range(32)]
    try:
        server.wait_for("open enrolment")
        finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)
    finally:
        for sock in crowd:
            sock.close()
    assert "busy: too many connections are waiting to register" in server.output


def test_a_crowd_that_completes_tls_and_idles_is_shed_before_honest_clients(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    crowd = [RawClient(port, f"idle{i}") for i in range(32)]  # past TLS, never registering
    try:
        clients = run_two_clients(programs, tmp_path, port)
        finish_cleanly(server, clients, rounds=1)
        reasons = [receive(idle.sock)["reason"] for idle in crowd]
        # The first honest client took the place of the oldest idler, and the second the next
        # one's if it came before the first had registered; the rest were turned away when the
        # run began.
        busy, full = (
            "busy: too many connections are waiting to register",
            "the run is full (2 clients)",
        )
        assert reasons[0] == busy and reasons[1] in (busy, full)
        assert set(reasons[2:]) == {full}
    finally:
        for idle in crowd:
            idle.sock.close()


def reset_connection(port: int) -> None:
    """Connect and reset at once (SO_LINGER 0): the server meets a socket already dead."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_connections_reset_before_and_during_the_run_harm_nobody(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    for _ in range(20):
        reset_connection(port)
    clients = join_raw_clients(port, "cli1", "cli2")  # the server is still there
    for _ in range(20):  # and round 1 is open until the clients answer
        reset_connection(port)
    for client in clients:
        client.send(client.update())
    for client in clients:
        client.hear_block()
        assert receive(client.sock) == {"type": "close", "round": 2}
        client.send({"type": "attest", "round": 2, "attestation": client.attestation()})
    for client in clients:
        client.hear_block()
        assert receive(client.sock) == {"type": "done", "blocks": 3}
        client.sock.close()
    assert server.finish() == 0, server.output
    assert "Traceback" not in server.output


def leave_right_after_the_update(port: int) -> dict:
    """cli1 and cli2 join and send their updates, cli2 hanging up at once after its own;
    return the first message cli1 then hears that is not a status ("waiting")."""
    honest, leaver = join_raw_clients(port, "cli1", "cli2")
    with honest:
        with leaver:
            leaver.send(leaver.update())  # and its close follows in the same breath
        honest.send(honest.update())
        message = receive(honest.sock)
        while message["type"] == "waiting":
            message = receive(honest.sock)
        return message


def test_a_client_that_leaves_right_after_its_update_is_not_counted(programs, tmp_path):
    _, port = start_server(programs, tmp_path, "--rounds", "1", "--min-clients", "1")
    message = leave_right_after_the_update(port)
    assert message["type"] == "block", message
    block = block_from_json(message["block"])
    assert block.cli == ("cli1",) and block.missing == {"cli2": "disconnected (round 1)"}


def test_the_frame_limit_is_sized_from_the_runs_features(programs, tmp_path):
    # 12 features: a client's message needs a few kilobytes, so a half-sent frame can claim no
    # more than that, not the 16 MiB that --max-frame-bytes allows at most.
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    with RawClient(port, "x") as peer:
        peer.sock.sendall(HEADER.pack(MAGIC, VERSION, 20_000))
        reply = receive(peer.sock)
    assert reply["reason"] == "frame of 20000 bytes is over the limit of 11792"
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)
