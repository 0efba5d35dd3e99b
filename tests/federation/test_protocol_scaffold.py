"""Scaffold's probe as the server's protocol runs it, fed by hand: sent once the round's updates
are in, asked again (naming who left) when a client leaves before it answers, never a third
time; and the messages out of place at each step."""

import numpy as np
import pytest
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

from fedchain.federation.events import Abort, Closed, Disconnect
from fedchain.federation.protocol import EXPECTED, Phase
from fedchain.learning.aggregation import SCAFFOLD
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.correction import probe_point
from fedchain.ledger.store import updates_from_json

GRADIENT = np.array([0.5, -1.0, 0.25, 2.0])  # three features and the bias


def scaffold_run(n_clients: int = 3, min_clients: int = 2, rounds: int = 2, clock=None):
    """A started scaffold run and its clients, joined: round 1's model is out."""
    plan = make_plan(
        n_clients=n_clients,
        min_clients=min_clients,
        rounds=rounds,
        aggregation=SCAFFOLD,
        parameters={"proximal": 0.3},
    )
    protocol, _ = make_server(plan, clock)
    peers = clients(*(f"cli{i}" for i in range(1, n_clients + 1)))
    join(protocol, *peers)
    return protocol, peers


def updates(*peers: ScriptedClient):
    return [p.update(np.full(3, float(i)), gradient=GRADIENT * i) for i, p in enumerate(peers)]


def left_out(actions, conn: int) -> str | None:
    return next((a.refusal for a in actions if isinstance(a, Disconnect) and a.conn == conn), None)


def test_the_probe_follows_the_updates_and_its_answers_make_the_block():
    protocol, peers = scaffold_run(rounds=2)
    for index in (1, 2):
        out = step(protocol, *updates(*peers[:2]))
        assert protocol.phase is Phase.TRAINING  # one update is still awaited
        out = step(protocol, *updates(peers[2]))
        assert protocol.phase is Phase.PROBING and EXPECTED[protocol.phase] == "gradient"
        probes = [sent_to(out, p.conn) for p in peers]
        assert all(len(sent) == 1 and sent[0]["type"] == "probe" for sent in probes)
        probe = probes[0][0]
        assert probe["round"] == index and probe["left"] == []
        shown = updates_from_json(probe["updates"])
        assert list(shown) == ["cli1", "cli2", "cli3"]
        candidate = probe_point(list(shown), shown)
        np.testing.assert_array_equal(probe["weights"], candidate.weights)
        out = step(protocol, *(p.answer(probe) for p in peers))
        (block,) = written(out)
        assert block.index == index and block.cli == ("cli1", "cli2", "cli3")
        assert all(u.probe_gradient for u in block.client_model.values())
        for peer in peers:
            peer.hear(out)
    out = step(protocol, *(p.attest() for p in peers))
    assert protocol.phase is Phase.DONE
    verify_chain(protocol.chain.blocks)


def test_a_client_leaving_before_it_answers_makes_a_second_probe_naming_it():
    protocol, (cli1, cli2, cli3) = scaffold_run()
    out = step(protocol, *updates(cli1, cli2, cli3))
    first = sent_to(out, 1)[0]
    out = step(protocol, Closed(3), cli1.answer(first), cli2.answer(first))
    (second,) = sent_to(out, 1)
    assert second["type"] == "probe" and second["left"] == ["cli3"]
    assert list(updates_from_json(second["updates"])) == ["cli1", "cli2"]
    assert sent_to(out, 2) == [second] and written(out) == []
    out = step(protocol, cli1.answer(second), cli2.answer(second))
    (block,) = written(out)
    assert block.cli == ("cli1", "cli2")
    assert block.missing == {"cli3": "disconnected (round 1)"}


def test_a_round_that_loses_clients_at_two_probes_stops_the_run():
    protocol, (cli1, cli2, cli3, cli4) = scaffold_run(n_clients=4)
    out = step(protocol, *updates(cli1, cli2, cli3, cli4))
    first = sent_to(out, 1)[0]
    out = step(protocol, Closed(3), *(c.answer(first) for c in (cli1, cli2, cli4)))
    second = sent_to(out, 1)[0]
    assert second["left"] == ["cli3"]
    out = step(protocol, Closed(4), cli1.answer(second), cli2.answer(second))
    assert out[-1] == Abort(
        "round 1 lost clients at 2 probes; a client answers no more probes a round"
    )
    assert protocol.phase is Phase.STOPPED and protocol.chain.last.index == 0


def test_a_client_that_leaves_at_the_probe_below_the_quorum_is_waited_for_and_trained_again():
    clock = FakeClock()
    protocol, (cli1, cli2) = scaffold_run(n_clients=2, min_clients=2, rounds=1, clock=clock)
    out = step(protocol, *updates(cli1, cli2))
    first = sent_to(out, 1)[0]
    out = step(protocol, Closed(2), cli1.answer(first))
    assert protocol.phase is Phase.SHORT
    again = ScriptedClient("cli2", 5)
    out = step(protocol, again.registration())
    # Short of its quorum, the round trains the client back, then asks both again.
    assert [m["type"] for m in again.hear(out)] == ["welcome", "train"]
    assert sent_to(out, 1) == []
    out = step(protocol, *updates(again))
    second = sent_to(out, 1)[0]
    assert second["type"] == "probe" and second["left"] == ["cli2"]
    out = step(protocol, cli1.answer(second), again.answer(second))
    assert written(out)[0].cli == ("cli1", "cli2")


def test_a_client_that_logs_in_again_at_the_probe_waits_for_the_next_round():
    # With its quorum, a round asked again must not train a client back in it, or by logging
    # in again at every probe it would hold the round forever.
    protocol, (cli1, cli2, cli3) = scaffold_run()
    out = step(protocol, *updates(cli1, cli2, cli3))
    first = sent_to(out, 1)[0]
    again = ScriptedClient("cli3", 7)
    out = step(protocol, again.registration(), cli1.answer(first), cli2.answer(first))
    assert "cli3 is left out of the run: logged in again on a new connection" in said(out)
    second = sent_to(out, 1)[-1]
    assert second["type"] == "probe" and second["left"] == ["cli3"]
    assert [m["type"] for m in again.hear(out)] == ["welcome"]
    out = step(protocol, cli1.answer(second), cli2.answer(second))
    (block,) = written(out)
    assert block.cli == ("cli1", "cli2")
    assert block.missing == {"cli3": "came back during round 1; in from round 2"}
    assert [m["type"] for m in again.hear(out)] == ["block", "train"]


# What cli3 does wrong, and the reason it is left out for; the round goes on with the others.
BREAKS_THE_PROBE = {
    "no gradient": (
        lambda c, p: c.update(),
        "sent its update without its gradient, which scaffold needs",
    ),
    "short gradient": (
        lambda c, p: c.update(gradient=GRADIENT[:-1]),
        "sent a gradient of 3 numbers, not 4",
    ),
    "a gradient instead": (lambda c, p: c.answer(p), "sent 'gradient' instead of its update"),
    "answers elsewhere": (
        None,
        "sent a gradient for round 1 not signed by its key at the round's candidate",
    ),
    "answers twice": (None, "sent a second message in round 1"),
    "sends its update again": (None, "sent 'update' instead of its gradient"),
    "answers for another round": (None, "sent round 2's gradient in round 1"),
    "silent at the probe": (None, "sent no gradient within 30 s (--round-timeout-s)"),
    "leaves at the probe": (None, "disconnected"),
}


def at_the_probe(bad: str, cli3: ScriptedClient, probe: dict, clock: FakeClock):
    if bad == "answers elsewhere":
        return cli3.answer({**probe, "weights": probe["weights"] + 1.0})
    if bad == "answers twice":
        twice = cli3.answer(probe)
        return type(twice)(twice.conn, twice.messages * 2)
    if bad == "sends its update again":
        return updates(cli3)[0]
    if bad == "answers for another round":
        return cli3.answer({**probe, "round": 2})
    if bad == "leaves at the probe":
        return Closed(cli3.conn)
    clock.advance(WAITS.round_timeout_s)
    return None


@pytest.mark.parametrize("bad", sorted(BREAKS_THE_PROBE))
def test_a_client_that_breaks_the_probe_is_left_out_and_the_round_goes_on(bad):
    clock = FakeClock()
    protocol, (cli1, cli2, cli3) = scaffold_run(clock=clock)
    make, reason = BREAKS_THE_PROBE[bad]
    if make is not None:  # wrong at its update: out before the probe, which shows the others
        probe = {"round": 1, "weights": np.zeros(3), "bias": 0.0}
        out = step(protocol, make(cli3, probe), *updates(cli1, cli2))
        assert left_out(out, 3).startswith(f"left out: {reason}")
        (probe,) = sent_to(out, 1)
        assert probe["left"] == [] and list(updates_from_json(probe["updates"])) == [
            "cli1",
            "cli2",
        ]
    else:  # wrong at the probe: the others are asked again, naming it
        out = step(protocol, *updates(cli1, cli2, cli3))
        first = sent_to(out, 3)[0]
        event = at_the_probe(bad, cli3, first, clock)
        answers = [cli1.answer(first), cli2.answer(first)]
        out = step(protocol, *answers, *([event] if event else []))
        assert left_out(out, 3) == f"left out: {reason}"
        (probe,) = sent_to(out, 1)
        assert probe["type"] == "probe" and probe["left"] == ["cli3"]
    out = step(protocol, cli1.answer(probe), cli2.answer(probe))
    (block,) = written(out)
    assert block.cli == ("cli1", "cli2") and block.missing["cli3"].startswith(reason)
