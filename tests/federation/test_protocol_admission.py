"""Who the server's protocol lets into a run, fed registrations by hand: authorized keys, a name
bound to its first key, a run that is full, columns, clients that speak or leave before the run
begins, and the join timeout."""

import math

import pytest
from chain_helpers import fixed_key
from protocol_helpers import (
    FEATURES,
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
)

from fedchain.federation import protocol as protocol_module
from fedchain.federation.events import (
    Abort,
    BadFrame,
    Closed,
    Disconnect,
    Registration,
    TurnAwayNewcomers,
    Write,
)
from fedchain.federation.protocol import Phase
from fedchain.ledger.verification import ChainError
from fedchain.trust.handshake import login_message
from fedchain.trust.keys import public_hex, sign


def refusal(actions, conn: int) -> str | None:
    """The reason CONN is disconnected with, if it is."""
    return next((a.refusal for a in actions if isinstance(a, Disconnect) and a.conn == conn), None)


def test_authorized_keys_admit_only_the_listed_names_with_their_keys():
    authorized = {name: public_hex(fixed_key(name)) for name in ("cli1", "cli2")}
    protocol, started = make_server(make_plan(authorized=authorized))
    assert not any("open enrolment" in line for line in said(started))
    stranger = ScriptedClient("mallory", 7)
    assert refusal(step(protocol, stranger.registration()), 7) == (
        "'mallory' is not in the authorized keys"
    )
    impostor = ScriptedClient("cli1", 8, key=fixed_key("not cli1's"))
    reason = refusal(step(protocol, impostor.registration()), 8)
    assert reason.startswith("cli1's key") and "is not the one authorized for that name" in reason
    assert protocol.members == []
    join(protocol, *clients("cli1", "cli2"))
    assert protocol.phase is Phase.TRAINING
    assert protocol.chain.genesis.run.participants == authorized


@pytest.mark.parametrize("login", ["wrong key", "replayed challenge", "relayed to another server"])
def test_a_login_that_does_not_prove_its_key_is_refused(login):
    protocol, _ = make_server()
    peer = ScriptedClient("x", 1)
    if login == "wrong key":
        registration = peer.registration(signing_key=fixed_key("someone else"))
    elif login == "replayed challenge":  # a login recorded on another connection
        recorded = ScriptedClient("x", 2).registration()
        registration = Registration(1, "127.0.0.1:1", peer.challenge, recorded.messages)
    else:  # signed for another server's key
        registration = relayed(peer)
    out = step(protocol, registration)
    assert refusal(out, 1).startswith("x's login signature does not verify for key")
    assert any(line.startswith("refused 127.0.0.1:1: x's login") for line in said(out))
    assert protocol.members == []


def relayed(peer: ScriptedClient):
    """PEER's login as signed for another server, handed to this one."""
    registration = peer.registration()
    login = login_message(public_hex(fixed_key("another server")), peer.challenge, peer.name)
    message = {**registration.messages[0], "login_signature": sign(peer.key, login)}
    return Registration(peer.conn, registration.address, peer.challenge, (message,))


def test_in_open_enrolment_a_name_stays_bound_to_its_first_key():
    protocol, started = make_server()
    assert any(line.startswith("open enrolment: any key may join") for line in said(started))
    first = ScriptedClient("cli1", 1)
    out = step(protocol, first.registration())
    assert "cli1 joined from 127.0.0.1:1 with 50 rows (1 of 2)" in said(out)
    out = step(protocol, Closed(1))
    assert said(out)[0] == "cli1 left before the run began (0 joined)"
    assert Disconnect(1) in out and protocol.members == []
    other = ScriptedClient("cli1", 2, key=fixed_key("another"))
    assert refusal(step(protocol, other.registration()), 2).startswith(
        "'cli1' first joined with key"
    )
    # With its first key, it may come back.
    step(protocol, ScriptedClient("cli1", 3).registration())
    assert [m.name for m in protocol.members] == ["cli1"]


def test_the_same_name_or_key_twice_is_refused():
    protocol, _ = make_server(make_plan(n_clients=3))
    step(protocol, ScriptedClient("cli1", 1).registration())
    assert refusal(step(protocol, ScriptedClient("cli1", 2).registration()), 2) == (
        "a client named 'cli1' has already joined"
    )
    same_key = ScriptedClient("cli9", 3, key=fixed_key("cli1"))
    reason = refusal(step(protocol, same_key.registration()), 3)
    assert reason.startswith("the key ") and reason.endswith(
        "has already joined under another name"
    )
    assert [m.conn for m in protocol.members] == [1]


def test_a_full_run_refuses_the_next_and_turns_newcomers_away_as_it_begins():
    protocol, _ = make_server(make_plan(n_clients=1, rounds=1))
    first, second = ScriptedClient("a", 1), ScriptedClient("b", 2)
    # Both arrive before the protocol decides anything: only one place.
    out = protocol.handle(first.registration()) + protocol.handle(second.registration())
    assert refusal(out, 2) == "the run is full (1 client)"
    out = step(protocol)
    assert TurnAwayNewcomers("the run is full (1 client)") in out
    assert [m["type"] for m in sent_to(out, 1)] == ["welcome", "train"]
    # Once the run has begun, only a client of its genesis may log in.
    late = ScriptedClient("c", 3)
    assert refusal(step(protocol, late.registration()), 3) == (
        "'c' is not a client of this run (its genesis admits only a)"
    )


def test_columns_that_differ_from_the_first_clients_are_refused():
    protocol, _ = make_server(make_plan(n_clients=3))
    out = step(protocol, ScriptedClient("cli1", 1).registration())
    assert "the run's features, from cli1: 3 columns (age, bmi, smoker)" in said(out)
    other = ScriptedClient("cli2", 2, features=("age", "bmi", "weight"))
    reason = refusal(step(protocol, other.registration()), 2)
    assert reason.startswith("cli2's columns differ from the run's: ")
    # Columns are matched by name: another order is the same columns.
    shuffled = ScriptedClient("cli3", 3, features=tuple(reversed(FEATURES)))
    assert refusal(step(protocol, shuffled.registration()), 3) is None
    assert [m.name for m in protocol.members] == ["cli1", "cli3"]


def test_columns_the_plan_fixes_hold_from_the_first_client():
    protocol, started = make_server(make_plan(features=("age", "bmi", "weight")))
    assert "the run's features, from the test data: 3 columns (age, bmi, weight)" in said(started)
    reason = refusal(step(protocol, ScriptedClient("cli1", 1).registration()), 1)
    assert reason.startswith("cli1's columns differ from the run's: ")


def test_the_first_clients_columns_are_forgotten_once_every_client_has_left():
    protocol, _ = make_server()
    step(protocol, ScriptedClient("cli1", 1).registration())
    step(protocol, Closed(1))
    other = ScriptedClient("cli2", 2, features=("a", "b"))
    assert refusal(step(protocol, other.registration()), 2) is None


@pytest.mark.parametrize("event", ["spoke", "bad frame"])
def test_a_client_that_speaks_before_the_run_is_removed_and_may_come_back(event):
    protocol, _ = make_server()
    chatty = ScriptedClient("chatty", 1)
    step(protocol, chatty.registration())
    stirred = chatty.says({"type": "done", "blocks": 1}) if event == "spoke" else BadFrame(1, "x")
    out = step(protocol, stirred)
    assert refusal(out, 1) == "a client may not speak before the run begins"
    assert protocol.members == [] and protocol.phase is Phase.ADMITTING
    step(protocol, ScriptedClient("chatty", 2).registration())
    assert [m.conn for m in protocol.members] == [2]


def test_a_register_message_must_come_first_and_alone():
    protocol, _ = make_server()
    peer = ScriptedClient("x", 1)
    attest = {"type": "attest", "round": 1, "attestation": bytes(64)}
    not_first = Registration(1, "127.0.0.1:1", peer.challenge, peer.says(attest).messages)
    assert (
        refusal(step(protocol, not_first), 1) == "expected a register message first, not 'attest'"
    )
    with_more = ScriptedClient("y", 2).registration(extra=(attest,))
    assert refusal(step(protocol, with_more), 2) == (
        "sent more than its registration before it was welcomed"
    )
    assert protocol.members == []


def test_the_run_stops_if_too_few_join_within_the_join_timeout():
    clock = FakeClock()
    protocol, _ = make_server(clock=clock)
    out = step(protocol, ScriptedClient("cli1", 1).registration())
    # The log says what the run waits for, and so does each client that has joined.
    waiting = "waiting: for 2 clients to join (1 joined: cli1); up to 60 s more (--join-timeout-s)"
    assert waiting in said(out)
    assert sent_to(out, 1) == [{"type": "waiting", "reason": waiting}]
    assert protocol.wake_at() == clock.now_s + WAITS.join_timeout_s
    clock.advance(WAITS.join_timeout_s - 1)
    assert not any(isinstance(a, Abort) for a in protocol.tick())
    clock.advance(1)
    assert protocol.wake_at() == clock.now_s
    out = protocol.tick()
    assert out == [Abort("only 1 of 2 clients joined within 60 s (--join-timeout-s)")]
    assert protocol.phase is Phase.STOPPED and protocol.chain is None  # no genesis was written
    assert protocol.handle(Closed(1)) == [] and protocol.tick() == []
    assert math.isinf(protocol.wake_at())


def test_a_genesis_that_does_not_verify_stops_the_run_cleanly(monkeypatch):
    # No peer can cause it (admission refuses each known cause first); were one found, the
    # run stops with the reason, as for a round block, and nothing escapes the protocol.
    def broken(*args, **kwargs):
        raise ChainError(0, "a fault of the server's own")

    monkeypatch.setattr(protocol_module, "mine_genesis", broken)
    protocol, _ = make_server(make_plan())
    out = join(protocol, *clients("cli1", "cli2"))
    assert (
        Abort(
            "the server made a genesis that does not verify: block 0: a fault of the server's own"
        )
        in out
    )
    assert protocol.finished and not any(isinstance(a, Write) for a in out)
