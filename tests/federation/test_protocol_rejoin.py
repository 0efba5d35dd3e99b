"""Clients coming back to a run, and a run resumed from its chain, as the server's protocol
handles them, fed by hand: caught up with the blocks so far, in from the next round (or at once
if the round is short), and the waits that bound it all."""

from dataclasses import replace

from chain_helpers import fixed_key
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

from fedchain.federation.events import Abort, Closed, Disconnect, Report
from fedchain.federation.plan import RunPlan
from fedchain.federation.protocol import RESUME_GRACE_S, Phase
from fedchain.ledger.chain import verify_chain


def refusal(actions, conn: int) -> str | None:
    return next((a.refusal for a in actions if isinstance(a, Disconnect) and a.conn == conn), None)


def back(name: str, conn: int, **kwargs) -> ScriptedClient:
    """NAME restarted, on a new connection."""
    return ScriptedClient(name, conn, **kwargs)


def test_a_round_short_of_its_quorum_takes_in_the_client_that_comes_back():
    clock = FakeClock()
    protocol, _ = make_server(make_plan(rounds=2), clock)
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    out = step(protocol, cli1.update(), cli2.update())
    cli1.hear(out)
    out = step(protocol, Closed(cli2.conn), cli1.update())
    assert protocol.phase is Phase.SHORT
    clock.advance(WAITS.rejoin_timeout_s - 1)
    protocol.tick()
    again = back("cli2", 9)
    out = step(protocol, again.registration())
    # Caught up: the welcome and block 1; then, as round 2 is short, its model at once.
    assert [m["type"] for m in again.hear(out)] == ["welcome", "block", "train"]
    assert sent_to(out, 9)[0]["height"] == 2 and again.last == cli1.last
    assert sent_to(out, 1) == []  # cli1 has round 2's model and its update is in
    assert any(line.startswith("cli2 is back from 127.0.0.1:9") for line in said(out))
    assert protocol.phase is Phase.TRAINING and [p.name for p in protocol.peers] == [
        "cli1",
        "cli2",
    ]
    out = step(protocol, again.update())
    (block,) = written(out)
    assert block.index == 2 and block.cli == ("cli1", "cli2") and not block.missing
    # The wait for cli2 is counted apart from the round's own time.
    (report,) = [a.round for a in out if isinstance(a, Report)]
    assert report.waiting_s == WAITS.rejoin_timeout_s - 1


def test_a_client_back_while_the_round_has_its_quorum_joins_from_the_next_round():
    protocol, _ = make_server(make_plan(n_clients=3, min_clients=2, rounds=3))
    cli1, cli2, cli3 = clients("cli1", "cli2", "cli3")
    join(protocol, cli1, cli2, cli3)
    out = step(protocol, Closed(3), cli1.update(), cli2.update())
    assert written(out)[0].missing == {"cli3": "disconnected (round 1)"}
    cli1.hear(out)
    cli2.hear(out)
    again = back("cli3", 4)
    out = step(protocol, again.registration())
    assert [m["type"] for m in again.hear(out)] == ["welcome", "block"]
    assert [m.name for m in protocol.standby] == ["cli3"]
    out = step(protocol, cli1.update(), cli2.update())
    block = written(out)[0]
    assert block.cli == ("cli1", "cli2")
    assert block.missing == {"cli3": "came back during round 2; in from round 3"}
    trained = again.hear(out)
    assert [m["type"] for m in trained] == ["block", "train"] and trained[-1]["round"] == 3
    assert protocol.standby == [] and len(protocol.peers) == 3


def test_a_client_back_must_be_of_the_genesis_with_its_key_and_its_rows():
    protocol, _ = make_server(make_plan(rounds=3, min_clients=1))
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    step(protocol, cli1.update(), cli2.update())
    newcomer = back("cli3", 5)
    assert refusal(step(protocol, newcomer.registration()), 5) == (
        "'cli3' is not a client of this run (its genesis admits only cli1, cli2)"
    )
    impostor = back("cli2", 6, key=fixed_key("x"))
    reason = refusal(step(protocol, impostor.registration()), 6)
    assert reason.startswith("cli2's key") and "is not the one this run admitted" in reason
    # The count weighs its model in every average: it is fixed for the run.
    liar = back("cli2", 7, n_samples=500)
    assert refusal(step(protocol, liar.registration()), 7) == (
        "cli2 now has 500 rows, but the chain records 50"
    )
    assert [m.conn for m in protocol.members] == [1, 2]  # the refusals harmed nobody


def test_a_client_logging_in_again_mid_round_replaces_its_update_and_the_round_completes():
    protocol, _ = make_server(make_plan(rounds=1))
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    step(protocol, cli1.update())
    again = back("cli1", 3)
    out = step(protocol, again.registration())
    # Its old connection goes, with its update; short of the quorum, the round takes it in.
    assert Disconnect(1, "left out: logged in again on a new connection") in out
    assert [m["type"] for m in again.hear(out)] == ["welcome"]
    assert "cli1" not in protocol.round.received
    # cli2's update leaves the round one short of its two: the client back is taken in.
    out = step(protocol, cli2.update())
    assert [m["type"] for m in again.hear(out)] == ["train"]
    out = step(protocol, again.update())
    (block,) = written(out)
    assert block.cli == ("cli1", "cli2") and not block.missing


def test_a_needed_client_logging_in_again_and_again_cannot_hold_a_round_forever():
    clock = FakeClock()
    protocol, _ = make_server(make_plan(rounds=1), clock)
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    step(protocol, cli1.update())
    for conn in range(10, 100):
        out = step(protocol, back("cli2", conn).registration())
        if protocol.finished:
            break
        assert protocol.phase is Phase.TRAINING
        clock.advance(1)
    assert out[-1] == Abort(
        "round 1 kept losing clients it needs (--min-clients) for more than 20 s "
        "(--rejoin-timeout-s)"
    )
    assert conn == 10 + WAITS.rejoin_timeout_s


def test_a_client_back_that_leaves_again_is_recorded_so():
    protocol, _ = make_server(make_plan(n_clients=3, min_clients=2, rounds=2))
    cli1, cli2, cli3 = clients("cli1", "cli2", "cli3")
    join(protocol, cli1, cli2, cli3)
    step(protocol, Closed(3))
    step(protocol, back("cli3", 4).registration())
    out = step(protocol, Closed(4))
    assert "cli3 is left out of the run: disconnected again" in said(out)
    out = step(protocol, cli1.update(), cli2.update())
    assert written(out)[0].missing == {"cli3": "disconnected again (round 1)"}


def test_a_client_back_as_the_run_closes_gets_the_closing_block():
    protocol, _ = make_server(make_plan(n_clients=3, min_clients=2, rounds=1))
    cli1, cli2, cli3 = clients("cli1", "cli2", "cli3")
    join(protocol, cli1, cli2, cli3)
    out = step(protocol, Closed(3), cli1.update(), cli2.update())
    cli1.hear(out)
    cli2.hear(out)
    assert protocol.phase is Phase.CLOSING
    again = back("cli3", 4)
    out = step(protocol, again.registration())
    assert any("the run is closing: it gets the closing block" in line for line in said(out))
    out = step(protocol, cli1.attest(), cli2.attest())
    (closing,) = written(out)
    assert closing.missing == {"cli3": "came back as the run was closing"}
    assert [m["type"] for m in again.hear(out)][-2:] == ["block", "done"]


# --- resuming --------------------------------------------------------------------------------


def interrupted(n_clients: int = 3, min_clients: int = 2, rounds: int = 3):
    """The chain of a run stopped after round 1, verified, as --resume loads it."""
    protocol, _ = make_server(
        make_plan(n_clients=n_clients, min_clients=min_clients, rounds=rounds)
    )
    names = [f"cli{i}" for i in range(1, n_clients + 1)]
    peers = clients(*names)
    out = join(protocol, *peers)
    out += step(protocol, *(p.update() for p in peers))
    return verify_chain(written(out))


def resume(chain, clock, waits=WAITS):
    return make_server(RunPlan.from_genesis(chain.genesis), clock, waits=waits, resumed=chain)


def test_a_resumed_run_waits_for_its_clients_and_goes_on_once_all_are_back():
    clock = FakeClock()
    chain = interrupted()
    protocol, started = resume(chain, clock)
    assert protocol.phase is Phase.RESUMING
    assert said(started)[-1] == (
        "resuming the run of the chain after block 1 (1 of 3 rounds done); waiting for its "
        "3 clients to come back"
    )
    out = step(protocol, *(back(n, c).registration() for n, c in (("cli1", 11), ("cli2", 12))))
    assert protocol.phase is Phase.RESUMING
    # No round is under way: each one back takes part in the next, and is told which.
    assert [line.split("; ")[-1] for line in said(out) if " is back from " in line] == [
        "it takes part in round 2"
    ] * 2
    assert said(out)[-1] == (
        "waiting: 2 of 3 clients are back; the run goes on without the rest in 10 s"
    )
    assert sent_to(out, 11)[-1]["type"] == "waiting"  # the clients back hear it too
    cli3 = back("cli3", 13)
    out = step(protocol, cli3.registration())
    assert [m["type"] for m in cli3.hear(out)] == ["welcome", "block", "train"]
    assert protocol.phase is Phase.TRAINING and protocol.round_index == 2
    assert [p.name for p in protocol.peers] == ["cli1", "cli2", "cli3"]


def test_a_resumed_run_goes_on_with_its_quorum_after_the_grace_period():
    clock = FakeClock()
    protocol, _ = resume(interrupted(), clock, replace(WAITS, rejoin_timeout_s=60.0))
    cli1, cli2 = back("cli1", 11), back("cli2", 12)
    cli1.hear(step(protocol, cli1.registration()))
    # cli2 comes back and leaves again: the quorum is not back after all, and the grace
    # period it began is void.
    assert said(step(protocol, cli2.registration()))[-1] == (
        "waiting: 2 of 3 clients are back; the run goes on without the rest in 10 s"
    )
    assert protocol.wake_at() == clock.now_s + RESUME_GRACE_S
    statuses = said(step(protocol, Closed(12)))
    for _ in range(int(RESUME_GRACE_S) + 1):
        clock.advance(1)
        statuses += said(protocol.tick())
    assert protocol.phase is Phase.RESUMING
    # What it waits for, said when it changes, not over and over.
    assert [line.split(";")[0] for line in statuses if line.startswith("waiting")] == [
        "waiting: 1 of 3 clients are back"
    ]
    cli2 = back("cli2", 14)
    cli2.hear(step(protocol, cli2.registration()))
    clock.advance(RESUME_GRACE_S - 1)
    protocol.tick()
    assert protocol.phase is Phase.RESUMING
    assert protocol.wake_at() == clock.now_s + 1
    clock.advance(1)
    out = protocol.tick()
    assert protocol.phase is Phase.TRAINING
    assert [m["type"] for m in sent_to(out, 11)] == ["train"]
    assert [m["type"] for m in sent_to(out, 14)] == ["train"]
    (block,) = written(step(protocol, cli1.update(), cli2.update()))
    assert block.index == 2 and block.cli == ("cli1", "cli2")
    assert block.missing == {"cli3": "not back since the server restarted"}


def test_a_resumed_run_stops_if_its_quorum_is_not_back_within_the_rejoin_timeout():
    clock = FakeClock()
    protocol, _ = resume(interrupted(), clock)
    step(protocol, back("cli1", 11).registration())
    clock.advance(WAITS.rejoin_timeout_s)
    assert protocol.tick()[-1] == Abort(
        "only 1 of the 2 clients the run needs (its min_clients) came back within 20 s "
        "(--rejoin-timeout-s)"
    )
    assert protocol.phase is Phase.STOPPED
    assert protocol.chain.last.index == 1  # nothing was written


def test_a_resumed_run_whose_quorum_is_back_at_the_rejoin_timeout_goes_on_after_the_grace():
    # docs/operations.md: a resumed server waits for "all of them, or the quorum and whoever
    # follows within 10 s". With the quorum back 5 s before --rejoin-timeout-s, the timeout
    # once stopped the run, saying "only 2 of the 2 clients the run needs ... came back".
    clock = FakeClock()
    protocol, _ = resume(interrupted(), clock)
    step(protocol, back("cli1", 11).registration())
    clock.advance(WAITS.rejoin_timeout_s - RESUME_GRACE_S / 2)
    step(protocol, back("cli2", 12).registration())
    clock.advance(RESUME_GRACE_S / 2)
    assert not any(isinstance(a, Abort) for a in protocol.tick())
    clock.advance(RESUME_GRACE_S / 2)
    protocol.tick()
    assert protocol.phase is Phase.TRAINING


def test_a_resumed_run_refuses_a_client_not_of_its_genesis():
    protocol, _ = resume(interrupted(), FakeClock())
    out = step(protocol, back("cli9", 11).registration())
    assert refusal(out, 11).startswith("'cli9' is not a client of this run")
