"""A real client in a scaffold run against a fake server that lies about the probe or the step:
the client refuses, says which lie, and never shows a traceback."""

from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import fixed_key, reseal
from test_client_against_bad_server import FEATURES, FakeServer, Session, start_client
from wire_helpers import receive

from fedchain.learning.aggregation import PROXIMAL, SCAFFOLD
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import ClientUpdate, RunRecord, TrainingSettings
from fedchain.ledger.chain import make_genesis, make_round_block
from fedchain.ledger.correction import probe_point
from fedchain.ledger.signatures import probe_message, sign_hex, update_message
from fedchain.trust.keys import public_hex
from fedchain.wire.frames import send_message

SIZE = len(FEATURES) + 1
OTHER = fixed_key("cli2")  # a second participant the fake server plays itself


def scaffold_genesis(s: Session, rounds: int = 2, *, with_other: bool = False):
    participants = {"cli1": s.client_key}
    if with_other:
        participants["cli2"] = public_hex(OTHER)
    run = RunRecord(rounds, 0, public_hex(s.key), participants)
    return make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)), feature_names=FEATURES, difficulty=8,
        run=run, server_key=s.key, aggregation=SCAFFOLD, parameters={PROXIMAL: 0.3},
    )  # fmt: skip


def as_update(message: dict) -> ClientUpdate:
    training = TrainingSettings(message["seed"], message["generations"], message["population"])
    return ClientUpdate(LinearModel(message["weights"], message["bias"]), message["n_samples"],
                        training, message["signature"].hex(),
                        gradient=tuple(map(float, message["gradient"])))  # fmt: skip


def probe(s: Session, candidate: LinearModel, index: int | None = None) -> dict:
    index = s.last.index + 1 if index is None else index
    send_message(s.conn, {"type": "probe", "round": index,
                          "weights": candidate.weights.copy(), "bias": candidate.bias})  # fmt: skip
    return receive(s.conn)


def with_answer(update: ClientUpdate, answer: dict) -> ClientUpdate:
    return replace(update, probe_gradient=tuple(map(float, answer["gradient"])),
                   probe_signature=answer["signature"].hex())  # fmt: skip


def honest_round(s: Session, *, shown=None, others=None) -> tuple[dict, object]:
    """Train cli1, probe it (at SHOWN, if given, instead of the candidate), and make the block
    of its update and OTHERS' (name: its update, and a function that probes it at a
    candidate)."""
    others = others or {}
    message = s.train()
    updates = {"cli1": as_update(message)} | {name: u for name, (u, _) in others.items()}
    candidate = probe_point(sorted(updates), updates)
    for name, (_, probed) in others.items():
        updates[name] = probed(candidate)
    answer = probe(s, shown or candidate)
    updates["cli1"] = with_answer(updates["cli1"], answer)
    block = make_round_block(s.last, dict(sorted(updates.items())),
                             attestations={"cli1": message["attestation"].hex()},
                             server_key=s.key)  # fmt: skip
    return message, block


def other_update(s: Session, gradient: float) -> dict:
    """cli2's signed update (the zero model, GRADIENT everywhere, at the start and at the
    candidate), as a function of the candidate."""
    unsigned = ClientUpdate(LinearModel.zeros(len(FEATURES)), 500, TrainingSettings(1, 1, 4),
                            gradient=(gradient,) * SIZE)  # fmt: skip
    message = update_message(genesis_hash=s.genesis.hash, index=s.last.index + 1,
                             previous_hash=s.last.hash, name="cli2", update=unsigned)  # fmt: skip
    update = replace(unsigned, signature=sign_hex(OTHER, message))

    def probed(candidate: LinearModel) -> ClientUpdate:
        signed = probe_message(genesis_hash=s.genesis.hash, index=s.last.index + 1,
                               previous_hash=s.last.hash, name="cli2", candidate=candidate,
                               gradient=(gradient,) * SIZE)  # fmt: skip
        return replace(update, probe_gradient=(gradient,) * SIZE,
                       probe_signature=sign_hex(OTHER, signed))  # fmt: skip

    return {"cli2": (update, probed)}


def probe_in_fedavg(s: Session) -> None:
    s.welcome(s.make_genesis(rounds=2))
    message = s.train()
    probe(s, LinearModel(message["weights"], message["bias"]))


def probe_for_round_2(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    message = s.train()
    probe(s, LinearModel(message["weights"], message["bias"]), index=2)


def probe_before_the_update(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    probe(s, LinearModel.zeros(len(FEATURES)))


def candidate_shown_to_this_client_alone(s: Session) -> None:
    s.welcome(scaffold_genesis(s, with_other=True))
    elsewhere = LinearModel(np.full(len(FEATURES), 0.5), 1.0)
    _, block = honest_round(s, shown=elsewhere, others=other_update(s, 0.0))
    s.send_block(block)


def forged_step(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    _, block = honest_round(s)
    search = dict(block.search, gradient=(0.0,) * SIZE)  # the correction the clients follow
    s.send_block(reseal(block, search=search))


def huge_candidate(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    s.train()
    probe(s, LinearModel(np.full(len(FEATURES), 1e100), 0.0))


def huge_global_gradient(s: Session) -> None:
    # cli2 (the server's own) signs gradients of 1e100: the block is valid, and the global
    # gradient round 2 corrects by is huge.
    s.welcome(scaffold_genesis(s, with_other=True))
    _, block = honest_round(s, others=other_update(s, 1e100))
    s.send_block(block)
    s.train()


LIES = {
    "a probe in a fedavg run": (probe_in_fedavg, "sent a probe for round 1 out of turn"),
    "a probe for another round": (probe_for_round_2, "sent a probe for round 2 out of turn"),
    "a probe before the update": (
        probe_before_the_update,
        "a 'probe' message while this client was waiting for the next round",
    ),
    "a candidate shown to this client alone": (
        candidate_shown_to_this_client_alone,
        "cli1's signature on its probe gradient does not verify at the round's candidate",
    ),
    "a forged step": (forged_step, "the recorded search is not the step scaffold takes"),
    "a huge candidate": (huge_candidate, "our round 1 gradient cannot be sent"),
    "a huge global gradient": (huge_global_gradient, "cannot train round 2's global model"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_the_client_refuses_a_scaffold_server_that_lies(programs, tmp_path, lie):
    script, expected = LIES[lie]
    server = FakeServer(script)
    client = start_client(programs, tmp_path, server.port)
    assert client.finish() == 1, client.output
    assert expected in client.output, client.output
    assert "Traceback" not in client.output
    server.finish()
