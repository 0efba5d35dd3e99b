"""Rounds as the server's protocol runs them, fed by hand: a whole run, the reasons a client is
left out (recorded in the next block), the quorum, and what the protocol says while it waits."""

from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import SERVER_KEY, fixed_key
from protocol_helpers import (
    WAITS,
    FakeClock,
    ScriptedClient,
    clients,
    join,
    make_plan,
    make_server,
    said,
    sent_to,
    step,
    written,
)

from fedchain.federation.events import (
    Abort,
    BadFrame,
    Closed,
    Disconnect,
    Report,
    SendFailed,
)
from fedchain.federation.protocol import (
    EXPECTED,
    Phase,
    ServerProtocol,
    Waits,
)
from fedchain.ledger.chain import verify_chain


def test_a_run_of_two_rounds_writes_a_chain_that_verifies_and_says_done():
    protocol, _ = make_server(make_plan(rounds=2))
    cli1, cli2 = clients("cli1", "cli2")
    out = join(protocol, cli1, cli2)
    blocks = written(out)
    assert [b.index for b in blocks] == [0]
    for client in (cli1, cli2):
        welcome, train = sent_to(out, client.conn)
        assert welcome["type"] == "welcome" and welcome["height"] == 1
        assert train["type"] == "train" and train["round"] == 1
    for index in (1, 2):
        assert protocol.phase is Phase.TRAINING and protocol.round_index == index
        assert EXPECTED[protocol.phase] == "update"
        out = step(protocol, cli1.update([1.0, 2.0, 3.0]), cli2.update())
        blocks += written(out)
        assert [r.round.block.index for r in out if isinstance(r, Report)] == [index]
        for client in (cli1, cli2):
            client.hear(out)
            assert client.last.index == index
    assert protocol.phase is Phase.CLOSING
    assert sent_to(out, 1)[-1] == {"type": "close", "round": 3}
    out = step(protocol, cli1.attest(), cli2.attest())
    blocks += written(out)
    assert sent_to(out, 1)[-1] == {"type": "done", "blocks": 4}
    assert protocol.phase is Phase.DONE and protocol.finished
    chain = verify_chain(blocks)
    assert chain.blocks == protocol.chain.blocks and len(blocks) == 4
    assert all(b.cli == ("cli1", "cli2") and not b.missing for b in blocks[1:3])
    assert blocks[3].attestations.keys() == {"cli1", "cli2"}
    # FedAvg of the two updates, weighted by their (equal) rows.
    np.testing.assert_allclose(blocks[1].server_model.weights, [0.5, 1.0, 1.5])


NOT_SIGNED = (
    "sent an update for round 1 not signed by its key (replayed from another round or chain, "
    "or forged)"
)
# How cli2 breaks the rules in round 1, and the reason the next block records.
LEAVE_OUTS = {
    "silent": (None, "sent no update within 30 s (--round-timeout-s)"),
    "signed by another key": (lambda c: c.update(key=fixed_key("another")), NOT_SIGNED),
    "replayed from another round": (lambda c: c.update(index=2), NOT_SIGNED),
    "replayed from another chain": (
        lambda c: c.update(genesis=replace(c.genesis, hash="ab" * 32)),
        NOT_SIGNED,
    ),
    "wrong round": (lambda c: c.update(round=2), "sent round 2's update in round 1"),
    "second message": (
        lambda c: c.says(c.update_message(), c.update_message()),
        "sent a second message in round 1",
    ),
    "wrong row count": (
        lambda c: c.update(n_samples=1000),
        "claims 1000 rows, but registered 50",
    ),
    "wrong weight count": (
        lambda c: c.update(weights=np.zeros(12)),
        "sent 12 weights for 3 features",
    ),
    "forged attestation": (
        lambda c: c.update(attestation=bytes(64)),
        "sent an attestation of block 0 that does not verify",
    ),
    "gradient in a fedavg run": (
        lambda c: c.update(gradient=np.zeros(4)),
        "sent a gradient, which a fedavg run does not take",
    ),
    "another message": (
        lambda c: c.attest(),
        "sent 'attest' instead of its update",
    ),
    "bad frame": (
        lambda c: BadFrame(c.conn, "update message: weights holds NaN or infinity"),
        "sent a bad frame: update message: weights holds NaN or infinity",
    ),
    "disconnected": (lambda c: Closed(c.conn), "disconnected"),
    "send failed": (
        lambda c: SendFailed(c.conn, "broken pipe"),
        "disconnected (broken pipe)",
    ),
}


@pytest.mark.parametrize("bad", sorted(LEAVE_OUTS))
def test_with_a_quorum_a_client_breaking_a_rule_is_left_out_and_the_block_says_why(bad):
    make, reason = LEAVE_OUTS[bad]
    clock = FakeClock()
    protocol, _ = make_server(make_plan(min_clients=1, rounds=1), clock)
    honest, suspect = clients("cli1", "cli2")
    join(protocol, honest, suspect)
    out = step(protocol, honest.update())
    if make is None:
        clock.advance(WAITS.round_timeout_s)
        out = step(protocol)
    else:
        out = step(protocol, make(suspect))
    assert Disconnect(suspect.conn, f"left out: {reason}") in out
    assert f"cli2 is left out of the run: {reason}" in said(out)
    assert protocol.absent["cli2"] == f"{reason} (round 1)"
    (block,) = written(out)
    assert block.cli == ("cli1",)
    assert block.missing == {"cli2": f"{reason} (round 1)"}  # under the hash, signed
    honest.hear(out)
    assert sent_to(out, 1)[-1] == {"type": "close", "round": 2}
    assert sent_to(out, suspect.conn) == []  # out of the run: no block, no close
    out = step(protocol, honest.attest())
    closing = written(out)[0]
    assert closing.attestations.keys() == {"cli1"} and "cli2" in closing.missing
    assert protocol.phase is Phase.DONE
    verify_chain(protocol.chain.blocks)


def test_a_client_back_that_speaks_before_its_round_is_left_out():
    protocol, _ = make_server(make_plan(n_clients=3, min_clients=2, rounds=1))
    cli1, cli2, cli3 = clients("cli1", "cli2", "cli3")
    join(protocol, cli1, cli2, cli3)
    step(protocol, Closed(3))
    back = ScriptedClient("cli3", 4)
    back.hear(step(protocol, back.registration()))
    assert [m.conn for m in protocol.standby] == [4]  # caught up, waiting for round 2
    assert step(protocol, cli3.says({"type": "done", "blocks": 1})) == []  # conn 3 is gone
    out = step(protocol, back.update())
    assert Disconnect(4, "left out: spoke out of turn") in out
    out = step(protocol, cli1.update(), cli2.update())
    assert written(out)[0].missing == {"cli3": "spoke out of turn (round 1)"}


def test_a_client_that_speaks_while_its_round_waits_for_its_quorum_is_left_out():
    protocol, _ = make_server(make_plan(n_clients=3, min_clients=3, rounds=1))
    cli1, cli2, cli3 = clients("cli1", "cli2", "cli3")
    join(protocol, cli1, cli2, cli3)
    step(protocol, cli1.update(), cli2.update(), Closed(3))
    assert protocol.phase is Phase.SHORT
    out = step(protocol, cli2.attest())
    assert Disconnect(2, "left out: spoke out of turn") in out
    assert protocol.absent["cli2"] == "spoke out of turn (round 1)"
    assert list(protocol.round.received) == ["cli1"]  # its update went with it


def test_a_client_that_leaves_right_after_its_update_is_not_counted():
    protocol, _ = make_server(make_plan(min_clients=1, rounds=1))
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    out = step(protocol, cli2.update(), Closed(cli2.conn), cli1.update())
    (block,) = written(out)
    assert block.cli == ("cli1",) and block.missing == {"cli2": "disconnected (round 1)"}


def test_a_round_short_of_its_quorum_waits_says_so_and_stops_after_the_rejoin_timeout():
    clock = FakeClock()
    protocol, _ = make_server(make_plan(rounds=1), clock)
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    # The update cli2 leaves behind does not make up the quorum of two.
    out = step(protocol, cli2.update(), Closed(cli2.conn), cli1.update())
    assert protocol.phase is Phase.SHORT and written(out) == []
    # Who it waits for, not why (said as cli2 left, and on the chain): a short line.
    waiting = (
        "waiting: round 1 has 1 of the 2 updates it needs (--min-clients) until cli2 comes "
        "back; up to 20 s more (--rejoin-timeout-s)"
    )
    assert said(out)[-1] == waiting
    assert sent_to(out, 1) == [{"type": "waiting", "reason": waiting}]
    # Said when it changes, not at every tick: nothing until the wait ends.
    clock.advance(WAITS.rejoin_timeout_s - 1)
    assert protocol.tick() == []
    assert protocol.wake_at() == clock.now_s + 1
    clock.advance(1)
    out = protocol.tick()
    assert out == [
        Abort(
            "round 1 cannot go on with 1 of the 2 clients it needs (--min-clients); none came "
            "back within 20 s (--rejoin-timeout-s): cli2 disconnected (round 1)"
        )
    ]
    assert protocol.phase is Phase.STOPPED
    assert [b.index for b in protocol.chain.blocks] == [0]


def test_a_client_that_leaves_after_its_closing_attestation_does_not_stop_the_run():
    protocol, _ = make_server(make_plan(min_clients=1, rounds=1))
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    out = step(protocol, cli1.update(), cli2.update())
    cli1.hear(out)
    cli2.hear(out)
    out = step(protocol, cli2.attest(), Closed(cli2.conn), cli1.attest())
    (closing,) = written(out)
    assert closing.attestations.keys() == {"cli1"}
    assert closing.missing == {"cli2": "disconnected (round 2)"}
    assert protocol.phase is Phase.DONE


def test_a_silent_closing_attestation_is_left_out_at_the_round_timeout():
    clock = FakeClock()
    protocol, _ = make_server(make_plan(rounds=1), clock)
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    out = step(protocol, cli1.update(), cli2.update())
    cli1.hear(out)
    assert protocol.phase is Phase.CLOSING and protocol.wake_at() == clock.now_s + 30
    step(protocol, cli1.attest())
    clock.advance(WAITS.round_timeout_s)
    (closing,) = written(protocol.tick())
    assert closing.missing == {"cli2": "sent no attest within 30 s (--round-timeout-s) (round 2)"}
    assert protocol.phase is Phase.DONE


def test_every_client_leaving_ends_the_run():
    protocol, _ = make_server(make_plan(min_clients=1, rounds=2))
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    step(protocol, cli1.update(), Closed(1), cli2.update(), Closed(2))
    protocol.clock.advance(WAITS.rejoin_timeout_s)
    (abort,) = [a for a in protocol.tick() if isinstance(a, Abort)]
    assert abort.reason.startswith("round 1 cannot go on with 0 of the 1 clients it needs")


def test_a_slow_block_is_announced_to_the_clients():
    waits = Waits(round_timeout_s=30.0, join_timeout_s=60.0, mining_estimate_s=120.0)
    protocol = ServerProtocol(make_plan(rounds=1), SERVER_KEY, FakeClock(), waits=waits)
    protocol.start()
    cli1, cli2 = clients("cli1", "cli2")
    out = join(protocol, cli1, cli2)
    assert "mining block 0 at 2 bits: about 120 s expected" in said(out)
    out = step(protocol, cli1.update(), cli2.update())
    reason = "mining block 1 at 2 bits: about 120 s expected"
    assert sent_to(out, 1)[0] == {"type": "waiting", "reason": reason}


def test_a_send_that_fails_as_a_round_begins_is_decided_on_at_once():
    # The transport hands in a SendFailed while it carries out what tick() returned (the next
    # round's model, say), and ticks again at wake_at(): the departure is noticed at once, so
    # wake_at() is now, not the round's deadline (--round-timeout-s, 60 s by default), which is
    # how long a real server once sat idle before saying it was short.
    clock = FakeClock()
    protocol, _ = make_server(make_plan(min_clients=1, rounds=2), clock)
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    out = step(protocol, Closed(1), cli2.update())
    assert sent_to(out, 2)[-1]["type"] == "train" and protocol.round_index == 2
    protocol.handle(SendFailed(2, "EOF occurred in violation of protocol"))
    assert protocol.peers == []
    assert protocol.wake_at() <= clock.now_s
