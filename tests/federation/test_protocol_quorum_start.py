"""A run whose clients are known up front (--authorized-keys) that begins with its quorum at the
join timeout, fed by hand: its genesis admits every authorized client, every block says why each
absent one is missing (a refusal, or that it never joined), and one that comes back later with
its key takes part. Open enrolment still needs all its --clients."""

from dataclasses import replace

import pytest
from chain_helpers import SERVER_KEY, fixed_key
from processes import ROOT
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
    wire,
    written,
)

from fedchain.federation.client import FederatedClient
from fedchain.federation.events import (
    Abort,
    Registration,
    SendFailed,
    Spoke,
    TurnAwayNewcomers,
)
from fedchain.federation.protocol import Phase
from fedchain.learning.dataset import load_dataset
from fedchain.learning.privacy import MECHANISM
from fedchain.learning.schema import parse_schema
from fedchain.ledger.block import MAX_REASON_CHARS
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.signatures import sign_privacy
from fedchain.trust.keys import public_hex

NAMES = ("cli1", "cli2", "cli3", "cli4")
AUTHORIZED = {name: public_hex(fixed_key(name)) for name in NAMES}
IMPOSTOR_KEY = fixed_key("not cli3's")
REFUSED = (
    f"refused: cli3's key {public_hex(IMPOSTOR_KEY)[:16]}… is not the one authorized for that "
    f"name ({AUTHORIZED['cli3'][:16]}…) (before round 1)"
)
NEVER = "never joined (before round 1)"


def quorum_plan(*, n_clients: int = 4, **changes):
    """N_CLIENTS authorized clients (of NAMES), two of them the quorum."""
    authorized = {name: AUTHORIZED[name] for name in NAMES[:n_clients]}
    return make_plan(
        **{"n_clients": n_clients, "min_clients": 2, "rounds": 2, "authorized": authorized}
        | changes
    )


def begun_with_quorum(clock: FakeClock, *, rounds: int = 2):
    """A run where cli1 and cli2 join, an impostor of cli3 is refused, cli4 never comes, and
    the join timeout passes: the protocol, the two, and what the start said."""
    protocol, _ = make_server(quorum_plan(rounds=rounds), clock)
    cli1, cli2 = clients("cli1", "cli2")
    step(protocol, ScriptedClient("cli3", 9, key=IMPOSTOR_KEY).registration())
    join(protocol, cli1, cli2)
    clock.advance(WAITS.join_timeout_s)
    out = step(protocol)
    cli1.hear(out)
    cli2.hear(out)
    return protocol, cli1, cli2, out


def test_an_authorized_run_with_its_quorum_begins_at_the_join_timeout_and_says_so():
    clock = FakeClock()
    protocol, _ = make_server(quorum_plan(), clock)
    out = step(protocol, ScriptedClient("cli1", 1).registration())
    assert (
        "waiting: for 4 clients to join (1 joined: cli1); up to 60 s more (--join-timeout-s)"
        in said(out)
    )
    clock.advance(10)
    out = step(protocol, ScriptedClient("cli2", 2).registration())
    waiting = (
        "waiting: for 4 clients to join (2 joined: cli1, cli2); with its quorum (--min-clients), "
        "the run begins with those who joined at the join timeout (--join-timeout-s) in 50 s"
    )
    assert waiting in said(out)
    assert {"type": "waiting", "reason": waiting} in sent_to(out, 1)
    clock.advance(WAITS.join_timeout_s - 10 - 1)
    assert protocol.tick() == [] and protocol.phase is Phase.ADMITTING
    clock.advance(1)
    out = step(protocol)
    assert (
        "2 of 4 clients joined within 60 s (--join-timeout-s), the quorum (--min-clients): the "
        "run begins without cli3, cli4"
    ) in said(out)
    # A newcomer still registering may be an absent client: it is not turned away.
    assert not any(isinstance(a, TurnAwayNewcomers) for a in out)
    assert protocol.chain.genesis.run.participants == AUTHORIZED
    assert protocol.phase is Phase.TRAINING and [p.name for p in protocol.peers] == [
        "cli1",
        "cli2",
    ]
    assert [m["type"] for m in sent_to(out, 1)] == ["welcome", "train"]


def test_every_block_says_why_each_absent_client_is_missing_and_the_chain_verifies():
    clock = FakeClock()
    protocol, cli1, cli2, _ = begun_with_quorum(clock)
    blocks = []
    for _ in range(2):
        out = step(protocol, cli1.update(), cli2.update())
        blocks += written(out)
        cli1.hear(out)
        cli2.hear(out)
    out = step(protocol, cli1.attest(), cli2.attest())
    blocks += written(out)
    assert protocol.phase is Phase.DONE and len(blocks) == 3  # two rounds and the closing
    for block in blocks:
        assert block.missing == {"cli3": REFUSED, "cli4": NEVER}
        assert all(len(why) <= MAX_REASON_CHARS for why in block.missing.values())
    assert blocks[0].cli == ("cli1", "cli2")
    verify_chain(protocol.chain.blocks)


def test_the_latest_reason_counts_and_a_client_that_left_says_so():
    clock = FakeClock()
    protocol, _ = make_server(quorum_plan(n_clients=3, rounds=1), clock)
    cli1, cli2 = clients("cli1", "cli2")
    step(protocol, ScriptedClient("cli3", 7, key=IMPOSTOR_KEY).registration())
    step(protocol, ScriptedClient("cli3", 8).registration())  # the real one, then gone
    step(protocol, Spoke(8, ()))  # a stir before the run: it has left
    join(protocol, cli1, cli2)
    # A stranger's refusal is not a client of the run's: nothing is recorded for it.
    step(protocol, ScriptedClient("mallory", 9).registration())
    clock.advance(WAITS.join_timeout_s)
    out = step(protocol)
    cli1.hear(out)
    cli2.hear(out)
    (block,) = written(step(protocol, cli1.update(), cli2.update()))
    assert block.missing == {
        "cli3": "refused: a client may not speak before the run begins (before round 1)"
    }


def test_an_absent_client_that_comes_back_with_its_key_takes_part_from_the_next_round():
    clock = FakeClock()
    protocol, cli1, cli2, _ = begun_with_quorum(clock)
    cli4 = ScriptedClient("cli4", 4)
    out = step(protocol, cli4.registration())
    # Sent the blocks so far (the genesis), as a client that dropped is.
    assert [m["type"] for m in cli4.hear(out)] == ["welcome"]
    assert [m.name for m in protocol.standby] == ["cli4"]
    out = step(protocol, cli1.update(), cli2.update())
    (first,) = written(out)
    assert first.missing == {"cli3": REFUSED, "cli4": "came back during round 1; in from round 2"}
    for client in (cli1, cli2, cli4):
        client.hear(out)
    assert sent_to(out, 4)[-1]["type"] == "train"
    out = step(protocol, cli1.update(), cli2.update(), cli4.update())
    (second,) = written(out)
    assert second.cli == ("cli1", "cli2", "cli4") and second.missing == {"cli3": REFUSED}
    # Not with another key: the genesis admits cli3 with its authorized key only.
    impostor = ScriptedClient("cli3", 5, key=IMPOSTOR_KEY)
    out = step(protocol, impostor.registration())
    assert "is not the one this run admitted" in said(out)[0]
    verify_chain(protocol.chain.blocks)


def test_a_real_client_that_never_joined_is_let_in_later_and_trains():
    """The client's side: FederatedClient, driven by hand as a transport would, accepts a
    genesis it is in and blocks that record it missing, and trains from the next round."""
    data = load_dataset(ROOT / "data" / "client1.csv")
    clock = FakeClock()
    protocol, _ = make_server(
        quorum_plan(n_clients=3, rounds=3, features=data.feature_names), clock
    )
    cli1, cli2 = (
        ScriptedClient(n, c, features=data.feature_names) for c, n in ((1, "cli1"), (2, "cli2"))
    )
    join(protocol, cli1, cli2)
    clock.advance(WAITS.join_timeout_s)
    scripted = (cli1, cli2)
    out = step(protocol)
    out = step(protocol, *(c.update() for c in heard(out, scripted)))
    late = FederatedClient(
        name="cli3",
        data=data,
        seed=None,
        generations=3,
        population=4,
        replica=None,
        say=lambda line: None,
        key=fixed_key("cli3"),
        min_difficulty=0,
    )
    late.connect(public_hex(SERVER_KEY))
    challenge = ScriptedClient("cli3", 3).challenge
    registration = late.step(wire({"type": "challenge", "challenge": challenge}))
    out += step(protocol, Registration(3, "127.0.0.1:3", challenge, (wire(registration),)))
    replies = told(late, 3, out)
    assert late.chain.last.index == 1 and replies == []  # caught up, silent until round 3
    out = step(protocol, *(c.update() for c in heard(out, scripted)))  # round 2, without it
    replies = told(late, 3, out)
    assert [r.messages[0]["type"] for r in replies] == ["update"]  # round 3's model
    out = step(protocol, *replies, *(c.update() for c in heard(out, scripted)))
    (third,) = written(out)
    assert third.cli == ("cli1", "cli2", "cli3") and not third.missing
    replies = told(late, 3, out)
    out = step(protocol, *replies, *(c.attest() for c in heard(out, scripted)))
    assert protocol.phase is Phase.DONE and len(written(out)[0].attestations) == 3
    blocks = protocol.chain.blocks
    assert [b.missing for b in blocks[1:3]] == [
        {"cli3": NEVER},
        {"cli3": "came back during round 2; in from round 3"},
    ]
    told(late, 3, out)
    assert late.chain.last == blocks[-1]
    verify_chain(blocks)


def heard(actions, scripted):
    """SCRIPTED, having heard ACTIONS."""
    for client in scripted:
        client.hear(actions)
    return scripted


def told(client: FederatedClient, conn: int, actions) -> list[Spoke]:
    """What CLIENT replies to the messages ACTIONS send to CONN, as events."""
    replies = (client.step(wire(m)) for m in sent_to(actions, conn))
    return [Spoke(conn, (wire(r),)) for r in replies if r is not None]


def stopped_at_the_timeout(plan, names) -> list:
    """What the join timeout does to a run of PLAN that NAMES have joined."""
    clock = FakeClock()
    protocol, _ = make_server(plan, clock)
    out = join(protocol, *clients(*names))
    clock.advance(WAITS.join_timeout_s)
    return out + protocol.tick()


def test_below_its_quorum_an_authorized_run_still_stops_at_the_join_timeout():
    out = stopped_at_the_timeout(quorum_plan(min_clients=3), ("cli1", "cli2"))
    assert (
        "waiting: for 4 clients to join (2 joined: cli1, cli2); up to 60 s more (--join-timeout-s)"
        in said(out)
    )
    assert out[-1] == Abort("only 2 of 4 clients joined within 60 s (--join-timeout-s)")


def test_open_enrolment_with_its_quorum_still_needs_all_its_clients():
    # Without authorized keys nobody knows who the absent would be.
    out = stopped_at_the_timeout(make_plan(n_clients=3, min_clients=2), ("cli1", "cli2"))
    assert not any("the run begins with those who joined" in line for line in said(out))
    assert out[-1] == Abort("only 2 of 3 clients joined within 60 s (--join-timeout-s)")


def test_more_authorized_names_than_places_still_needs_all_its_clients():
    # Any three of the four may fill the run: which would be the absent one is not known.
    plan = make_plan(n_clients=3, min_clients=2, authorized=AUTHORIZED)
    out = stopped_at_the_timeout(plan, ("cli1", "cli2"))
    assert out[-1] == Abort("only 2 of 3 clients joined within 60 s (--join-timeout-s)")


def test_with_every_authorized_client_joined_the_run_begins_at_once_as_before():
    protocol, _ = make_server(quorum_plan())
    out = join(protocol, *clients(*NAMES))
    assert TurnAwayNewcomers("the run is full (4 clients)") in out
    assert protocol.chain.genesis.run.participants == AUTHORIZED
    assert protocol.absent == {} and protocol.phase is Phase.TRAINING


def private_quorum_plan(max_epsilon):
    """Three authorized clients, two the quorum, in a private run (a schema; MAX_EPSILON)."""
    schema = parse_schema("column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n")
    return replace(quorum_plan(n_clients=3), schema=schema, max_epsilon=max_epsilon)


def privacy_of(name: str, plan) -> dict:
    """NAME's signed statement of ε 1 under PLAN's schema, as its registration carries it."""
    statement = sign_privacy(
        fixed_key(name),
        server_key=public_hex(SERVER_KEY),
        name=name,
        mechanism=MECHANISM,
        epsilon=1.0,
        delta=1e-5,
        schema_digest=plan.schema.digest(),
    )
    return {
        "mechanism": statement.mechanism,
        "epsilon": statement.epsilon,
        "delta": statement.delta,
        "signature": bytes.fromhex(statement.signature),
    }


@pytest.mark.parametrize("max_epsilon", [2.0, None])
def test_a_private_run_still_needs_all_its_clients(max_epsilon):
    # Its genesis records each private client's signed statement, which one that never joined
    # has not made: admitted without one, it failed the run's --max-epsilon (the genesis did not
    # verify and tick() raised ChainError), or, with no limit, could never come back private.
    plan = private_quorum_plan(max_epsilon)
    clock = FakeClock()
    protocol, _ = make_server(plan, clock)
    for conn, name in enumerate(("cli1", "cli2"), start=1):
        step(protocol, ScriptedClient(name, conn).registration(privacy=privacy_of(name, plan)))
    clock.advance(WAITS.join_timeout_s)
    out = step(protocol)
    assert out[-1] == Abort("only 2 of 3 clients joined within 60 s (--join-timeout-s)")
    assert protocol.chain is None


def test_a_reason_of_control_characters_stays_within_the_block_s_limit():
    # printable() escapes each control character into four or more: cut after escaping, not
    # before, or a reason of 300 of them (a transport's words) made a block that cannot exist.
    clock = FakeClock()
    protocol, _ = make_server(quorum_plan(n_clients=3), clock)
    cli1, cli2, cli3 = clients("cli1", "cli2", "cli3")
    join(protocol, cli1, cli2, cli3)
    step(protocol, SendFailed(cli2.conn, "\x00" * MAX_REASON_CHARS))
    out = step(protocol, cli1.update(), cli3.update())
    assert not any(isinstance(a, Abort) for a in out), out[-1]
    (block,) = written(out)
    assert len(block.missing["cli2"]) <= MAX_REASON_CHARS
    assert block.missing["cli2"].startswith("disconnected (\\x00")
