"""Bad frames, bad logins and bad updates sent to a running server: each is refused with a clear
reason, nothing they carry runs, the server keeps serving or stops cleanly, and the chain stays
valid."""

import math
import os
import pickle
import re
import socket
import ssl
import struct
import time
from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import fixed_key
from processes import run_blockchain_cli, start_server
from raw_peers import N_SAMPLES, RawClient, connect, join_raw_clients, write_key
from wire_helpers import Exploit, frame, receive

from fedchain.federation.protocol import RESUME_GRACE_S, STATUS_EVERY_S
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


@pytest.mark.parametrize(
    ("login", "expected"),
    [
        ("wrong key", "x's login signature does not verify"),
        ("replayed challenge", "x's login signature does not verify"),
        ("relayed to another server", "x's login signature does not verify"),
    ],
)
def test_a_login_that_does_not_prove_its_key_is_refused(programs, tmp_path, login, expected):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    with RawClient(port, "x") as first:
        recorded = first.challenge
    with RawClient(port, "x") as peer:
        if login == "wrong key":
            peer.register(signing_key=fixed_key("someone else"))
        elif login == "replayed challenge":  # a login recorded on an earlier connection
            peer.register(challenge=recorded)
        else:  # a login this client made for another server, relayed here
            peer.register(server_key=public_hex(fixed_key("another server")))
        reply = receive(peer.sock)
    assert reply["type"] == "refused" and reply["reason"].startswith(expected)
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


def test_in_open_enrolment_a_name_stays_bound_to_its_first_key(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    server.wait_for("open enrolment")
    with RawClient(port, "cli1") as first:
        first.register()
        server.wait_for("cli1 joined")
    server.wait_for("cli1 left before the run began")
    with RawClient(port, "cli1", key=fixed_key("another")) as other:
        other.register()
        assert "'cli1' first joined with key" in receive(other.sock)["reason"]
    (tmp_path / "keys").mkdir(exist_ok=True)
    write_key(tmp_path / "keys" / "cli1.key", fixed_key("cli1"))
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def update_with(client: RawClient, sent: dict | None = None, **signing) -> bytes:
    """A framed update signed as SIGNING says, with the fields in SENT changed after signing."""
    return frame(pickle.dumps({**client.update(**signing), **(sent or {})}, protocol=5))


NOT_SIGNED = (
    "sent an update for round 1 not signed by its key (replayed from another round or chain, "
    "or forged)"
)
BAD_UPDATES = {
    "3 weights": (
        lambda c: update_with(c, {"weights": np.zeros(3)}),
        "sent 3 weights for 12 features",
    ),
    "NaN": (
        lambda c: update_with(c, {"weights": np.full(12, np.nan)}),
        "sent a bad frame: update message: weights holds NaN or infinity",
    ),
    "no rows": (
        lambda c: update_with(c, {"n_samples": 0}),
        "sent a bad frame: update message: n_samples must be a positive integer, not 0",
    ),
    "more rows": (
        lambda c: update_with(c, {"n_samples": 10**6}),
        "claims 1000000 rows, but registered 535",
    ),
    "huge": (
        lambda c: update_with(c, {"weights": np.full(12, 1e300)}),
        "sent a bad frame: update message: weights holds a number larger than 1e+100",
    ),
    "signed by another key": (
        lambda c: update_with(c, key=fixed_key("another")),
        NOT_SIGNED,
    ),
    "replayed from another round": (
        lambda c: update_with(c, index=2),
        NOT_SIGNED,
    ),
    "replayed from another chain": (
        lambda c: update_with(c, genesis=replace(c.genesis, hash="ab" * 32)),
        NOT_SIGNED,
    ),
    "forged attestation": (
        lambda c: update_with(c, {"attestation": bytes(64)}),
        "sent an attestation of block 0 that does not verify",
    ),
    "silent": (None, "sent no update within 3 s (--round-timeout-s)"),
}


@pytest.mark.parametrize("bad", sorted(BAD_UPDATES))
def test_a_bad_update_stops_the_run_cleanly_with_its_reason(programs, tmp_path, bad):
    make, expected = BAD_UPDATES[bad]
    server, port = start_server(programs, tmp_path, "--rounds", "3", "--round-timeout-s", "3")
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


def test_two_registrations_at_once_for_the_last_place_admit_only_one(programs, tmp_path):
    _, port = start_server(programs, tmp_path, "--clients", "1", "--rounds", "1")
    first, second = RawClient(port, "a"), RawClient(port, "b")
    with first, second:
        first.register()  # both, as near at once as can be
        second.register()
        # With room for one, exactly one is welcomed into the run; the other is turned away
        # (as the run is full, or already under way if it came a moment too late).
        replies = []
        for client in (first, second):
            try:
                replies.append(receive(client.sock))
            except (ssl.SSLError, OSError, ConnectionError):
                replies.append({"type": "closed"})  # turned away once the run had begun
        kinds = sorted(r["type"] for r in replies)
        assert kinds in (["refused", "welcome"], ["closed", "welcome"])
        refused = [r for r in replies if r["type"] == "refused"]
        assert all(r["reason"] == "the run is full (1 client)" for r in refused)


def test_a_client_that_speaks_before_the_run_is_removed(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    with RawClient(port, "chatty") as chatty:
        chatty.register()
        server.wait_for("chatty joined")
        chatty.send({"type": "done", "blocks": 1})
        assert "may not speak before the run" in receive(chatty.sock)["reason"]
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def test_a_newcomer_or_an_impostor_during_the_run_is_refused_and_the_run_goes_on(
    programs, tmp_path
):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    cli1, cli2 = join_raw_clients(port, "cli1", "cli2")  # round 1 is open until they answer
    with cli1, cli2:
        # Only the clients the genesis admitted may log in again, each with its own key.
        newcomer, impostor = RawClient(port, "cli3"), RawClient(port, "cli2", key=fixed_key("x"))
        for peer, expected in (
            (newcomer, "'cli3' is not a client of this run (its genesis admits only cli1, cli2)"),
            (impostor, "cli2's key"),
        ):
            with peer:
                peer.register()
                reply = receive(peer.sock)
                assert reply["type"] == "refused" and expected in reply["reason"], reply
        assert "not the one this run admitted" in server.wait_for(r"refused .*cli2's key").string
        for client in (cli1, cli2):
            client.send(client.update())
        for client in (cli1, cli2):
            assert client.hear_block().index == 1
            assert receive(client.sock) == {"type": "close", "round": 2}
        for client in (cli1, cli2):
            client.send({"type": "attest", "round": 2, "attestation": client.attestation()})
        for client in (cli1, cli2):
            assert client.hear_block().attestations.keys() == {"cli1", "cli2"}
            assert receive(client.sock) == {"type": "done", "blocks": 3}
    assert server.finish() == 0, server.output
    assert server.output.rstrip().endswith("valid: 3 blocks; the run is complete (1 of 1 rounds)")


@pytest.mark.parametrize("bad", ["replayed from another round", "signed by another key", "silent"])
def test_with_a_quorum_a_bad_client_is_left_out_and_the_run_goes_on(programs, tmp_path, bad):
    make, expected = BAD_UPDATES[bad]
    server, port = start_server(
        programs, tmp_path, "--rounds", "1", "--min-clients", "1", "--round-timeout-s", "3"
    )
    honest, suspect = join_raw_clients(port, "cli1", "cli2")
    with honest, suspect:
        honest.send(honest.update())
        if make is not None:
            suspect.sock.sendall(make(suspect))
        block = honest.hear_block()
        assert block.cli == ("cli1",)
        assert block.missing == {"cli2": f"{expected} (round 1)"}  # under the hash, signed
        assert receive(honest.sock) == {"type": "close", "round": 2}
        honest.send({"type": "attest", "round": 2, "attestation": honest.attestation()})
        closing = honest.hear_block()
        assert closing.attestations.keys() == {"cli1"} and "cli2" in closing.missing
        assert receive(honest.sock) == {"type": "done", "blocks": 3}
    assert server.finish() == 0, server.output
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 0, result.stdout


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


def test_a_round_that_needs_a_client_that_left_right_after_its_update_stops(programs, tmp_path):
    # The update it left behind does not make up the quorum of two.
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--min-clients", "2")
    message = leave_right_after_the_update(port)
    assert message["type"] == "refused", message
    assert message["reason"].startswith("run stopped: round 1 cannot go on with 1 of the 2 clients")
    assert server.finish() == 1, server.output
    assert "round 1 cannot go on with 1 of the 2 clients" in server.output
    assert "Traceback" not in server.output


def test_a_client_that_leaves_after_its_closing_attestation_does_not_stop_the_run(
    programs, tmp_path
):
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--min-clients", "1")
    clients = join_raw_clients(port, "cli1", "cli2")
    for client in clients:
        client.send(client.update())
    for client in clients:
        client.hear_block()
        assert receive(client.sock) == {"type": "close", "round": 2}
    for client in clients:
        client.send({"type": "attest", "round": 2, "attestation": client.attestation()})
    clients[1].sock.close()
    closing = clients[0].hear_block()
    assert "cli1" in closing.attestations
    assert set(closing.attestations) | set(closing.missing) == {"cli1", "cli2"}
    assert not set(closing.attestations) & set(closing.missing)
    clients[0].sock.close()
    assert server.finish() == 0, server.output


def test_every_client_leaving_ends_the_run_cleanly(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "2", "--min-clients", "1")
    clients = join_raw_clients(port, "cli1", "cli2")
    for client in clients:
        client.send(client.update())
        client.sock.close()
    assert server.finish() == 1, server.output
    # Round 1, or round 2 if their updates were in before their goodbyes were seen.
    assert re.search(r"round [12] cannot go on with 0 of the 1 clients", server.output)
    assert "Traceback" not in server.output


def test_the_frame_limit_is_sized_from_the_runs_features(programs, tmp_path):
    # 12 features: a client's message needs a few kilobytes, so a half-sent frame can claim no
    # more than that, not the 16 MiB that --max-frame-bytes allows at most.
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    with RawClient(port, "x") as peer:
        peer.sock.sendall(HEADER.pack(MAGIC, VERSION, 20_000))
        reply = receive(peer.sock)
    assert reply["reason"] == "frame of 20000 bytes is over the limit of 11792"
    finish_cleanly(server, run_two_clients(programs, tmp_path, port), rounds=1)


def test_a_client_back_mid_run_must_bring_the_rows_the_chain_recorded(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "3", "--min-clients", "1")
    cli1, cli2 = join_raw_clients(port, "cli1", "cli2")
    with cli1, cli2:
        for client in (cli1, cli2):
            client.send(client.update())
        for client in (cli1, cli2):
            client.hear_block()
        # cli2 logs in again, as after a restart, but with other rows: refused, since its count
        # weighs its model in every average.
        with RawClient(port, "cli2") as liar:
            liar.register(n_samples=10 * N_SAMPLES)
            reply = receive(liar.sock)
        assert reply["type"] == "refused", reply
        assert (
            f"now has {10 * N_SAMPLES} rows, but the chain records {N_SAMPLES}" in reply["reason"]
        )
        # With its rows as recorded it is back: its old connection is closed, it catches up on
        # every block, sits out the round under way (recorded so) and trains in the next.
        with RawClient(port, "cli2") as back:
            back.register()
            welcome = receive(back.sock)
            assert welcome["type"] == "welcome" and welcome["height"] == 2
            assert block_from_json(receive(back.sock)["block"]) == cli1.last
            server.wait_for(r"^cli2 is left out of the run: logged in again on a new connection")
            assert receive(cli1.sock)["type"] == "train"
            cli1.send(cli1.update())
            sat_out = block_from_json(receive(back.sock)["block"])
            assert sat_out.cli == ("cli1",)
            assert sat_out.missing == {"cli2": "came back during round 2; in from round 3"}
            trained = receive(back.sock)
            assert trained["type"] == "train" and trained["round"] == 3


def test_a_client_logging_in_again_mid_round_replaces_its_update_and_the_round_completes(
    programs, tmp_path
):
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--rejoin-timeout-s", "30")
    cli1, cli2 = join_raw_clients(port, "cli1", "cli2")
    with cli1, cli2:
        cli1.send(cli1.update())  # then cli1 restarts: its old connection and update are gone
        with RawClient(port, "cli1") as again:
            again.register()
            server.wait_for(r"^cli1 is left out of the run: logged in again on a new connection")
            cli2.send(cli2.update())  # one update of the two the round needs: cli1 is taken in
            train = again.hear_welcome()
            assert train["type"] == "train" and train["round"] == 1, train
            again.send(again.update())
            block = again.hear_block()
    assert block.cli == ("cli1", "cli2") and not block.missing
    assert server.finish() == 0, server.output


def test_a_resumed_run_goes_on_once_its_quorum_is_back_even_if_one_left_meanwhile(
    programs, tmp_path
):
    flags = ("--clients", "3", "--min-clients", "2", "--rounds", "2")
    server, port = start_server(programs, tmp_path, *flags)
    clients = join_raw_clients(port, "cli1", "cli2", "cli3")
    for client in clients:
        client.send(client.update())
    for client in clients:
        client.hear_block()
        client.sock.close()
    server.process.kill()  # after block 1, before round 2
    server.process.wait()
    resumed, port = start_server(programs, tmp_path, *flags, "--resume", "--rejoin-timeout-s", "60")
    first = RawClient(port, "cli1")
    first.register()
    # cli2 comes back and leaves again: the quorum is not back after all, and the server waits.
    with RawClient(port, "cli2") as fickle:
        fickle.register()
        resumed.wait_for(r"^cli2 is back")
        back_at = len(resumed.lines)
    resumed.wait_for(r"^cli2 is left out of the run: disconnected again")
    # Past the grace period the quorum had started: one client is not a quorum to go on with.
    # The server says what it waits for at least STATUS_EVERY_S apart: the third time since cli2
    # came back is after the grace period, and it still waits.
    said = sum(line.startswith("waiting: ") for line in resumed.lines[back_at:])
    while said < 1 + math.ceil(RESUME_GRACE_S / STATUS_EVERY_S):
        line = resumed.wait_for(r"^waiting: |^round 2").string
        assert line.startswith("waiting: 1 of 3 clients are back"), resumed.output
        said += 1
    second = RawClient(port, "cli2")
    second.register()
    # Two of three back: after the grace period the round goes on with both, not waiting for
    # more to come back on top of them.
    with first, second:
        for client in (first, second):
            train = client.hear_welcome()
            while train["type"] == "waiting":  # told what the resumed server waits for
                train = receive(client.sock)
            assert train == {**train, "type": "train", "round": 2}
            client.send(client.update())
        block = first.hear_block()
    assert block.index == 2 and block.cli == ("cli1", "cli2") and "cli3" in block.missing


def test_a_needed_client_logging_in_again_and_again_cannot_hold_a_round_forever(programs, tmp_path):
    # Both clients are needed (the default quorum). Each new login of cli2 closes its old
    # connection, so the round falls short and takes the new one in at once: without a bound
    # on the round's whole wait, this could go on for ever.
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    honest, suspect = join_raw_clients(port, "cli1", "cli2")
    with honest, suspect:
        honest.send(honest.update())
        logins, stop_at = [suspect], time.monotonic() + 30
        while server.process.poll() is None and time.monotonic() < stop_at:
            try:
                again = RawClient(port, "cli2")
                again.register()
            except OSError:  # ConnectionError and ssl.SSLError too: the server has stopped
                break
            logins.append(again)
            time.sleep(0.2)
        for login in logins:
            login.sock.close()
        assert server.finish() == 1, server.output
    assert re.search(
        r"run stopped: round 1 kept losing clients it needs \(--min-clients\) for more than "
        r"1 s \(--rejoin-timeout-s\)",
        server.output,
    ), server.output
    assert "Traceback" not in server.output
