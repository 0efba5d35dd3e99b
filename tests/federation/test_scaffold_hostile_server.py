"""A client in a scaffold run against a fake server that lies about the probe or the step: the
client refuses and says which lie. The scripts drive the real client in this process through
its step() (tests/client_steps.py); a refused client process is tested once, in
test_client_against_bad_server.py."""

from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import fixed_key, reseal
from client_loopback import new_client
from client_steps import play
from fake_server import FEATURES, Session, crash
from processes import ROOT

from fedchain.learning.aggregation import PROXIMAL, SCAFFOLD
from fedchain.learning.corrected_training import gradient
from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.local_training import LocalProblem
from fedchain.ledger.block import ClientUpdate, RunRecord, TrainingSettings
from fedchain.ledger.chain import make_genesis, make_round_block
from fedchain.ledger.correction import probe_point
from fedchain.ledger.signatures import probe_message, sign_hex, update_message
from fedchain.ledger.store import updates_to_json
from fedchain.trust.keys import public_hex
from fedchain.wire.frames import ConnectionClosed

SIZE = len(FEATURES) + 1
OTHER = fixed_key("cli2")  # a second participant the fake server plays itself


def scaffold_genesis(s: Session, rounds: int = 2, *, with_other: bool = False):
    participants = {"cli1": s.client_key}
    if with_other:
        participants["cli2"] = public_hex(OTHER)
    run = RunRecord(rounds, 0, public_hex(s.key), participants)
    return make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=8,
        run=run,
        server_key=s.key,
        aggregation=SCAFFOLD,
        parameters={PROXIMAL: 0.3},
    )


def as_update(message: dict) -> ClientUpdate:
    training = TrainingSettings(message["seed"], message["generations"], message["population"])
    return ClientUpdate(
        LinearModel(message["weights"], message["bias"]),
        message["n_samples"],
        training,
        message["signature"].hex(),
        gradient=tuple(map(float, message["gradient"])),
    )


def probe(s: Session, updates: dict, *, candidate=None, left=(), index=None) -> dict:
    """Ask for the gradient at CANDIDATE (by default the FedAvg of UPDATES, which the probe
    shows), naming LEFT as the clients that left since the last probe; return the answer."""
    index = s.last.index + 1 if index is None else index
    candidate = candidate or probe_point(tuple(updates), updates)
    s.send(
        {
            "type": "probe",
            "round": index,
            "weights": candidate.weights.copy(),
            "bias": candidate.bias,
            "updates": updates_to_json(updates),
            "left": list(left),
        }
    )
    return s.receive()


def with_answer(update: ClientUpdate, answer: dict) -> ClientUpdate:
    return replace(
        update,
        probe_gradient=tuple(map(float, answer["gradient"])),
        probe_signature=answer["signature"].hex(),
    )


def honest_round(s: Session, *, alone=False, others=None) -> tuple[dict, object]:
    """Train cli1, probe it (at the candidate of its update ALONE, if so, instead of the
    round's), and make the block of its update and OTHERS' (name: its update, and a function
    that probes it at a candidate)."""
    others = others or {}
    message = s.train()
    updates = {"cli1": as_update(message)} | {name: u for name, (u, _) in others.items()}
    shown = {"cli1": updates["cli1"]} if alone else dict(updates)
    candidate = probe_point(sorted(updates), updates)
    for name, (_, probed) in others.items():
        updates[name] = probed(candidate)
    answer = probe(s, shown)
    updates["cli1"] = with_answer(updates["cli1"], answer)
    block = make_round_block(
        s.last,
        dict(sorted(updates.items())),
        attestations={"cli1": message["attestation"].hex()},
        server_key=s.key,
    )
    return message, block


def other_update(s: Session, gradient: float, model: LinearModel | None = None) -> dict:
    """cli2's signed update (MODEL, by default zeros; GRADIENT everywhere, at the start and at
    the candidate), as a function of the candidate."""
    model = model or LinearModel.zeros(len(FEATURES))
    unsigned = ClientUpdate(model, 500, TrainingSettings(1, 1, 4), gradient=(gradient,) * SIZE)
    message = update_message(
        genesis_hash=s.genesis.hash,
        index=s.last.index + 1,
        previous_hash=s.last.hash,
        name="cli2",
        update=unsigned,
    )
    update = replace(unsigned, signature=sign_hex(OTHER, message))

    def probed(candidate: LinearModel) -> ClientUpdate:
        signed = probe_message(
            genesis_hash=s.genesis.hash,
            index=s.last.index + 1,
            previous_hash=s.last.hash,
            name="cli2",
            candidate=candidate,
            gradient=(gradient,) * SIZE,
        )
        return replace(
            update, probe_gradient=(gradient,) * SIZE, probe_signature=sign_hex(OTHER, signed)
        )

    return {"cli2": (update, probed)}


def probe_in_fedavg(s: Session) -> None:
    s.welcome(s.make_genesis(rounds=2))
    message = s.train()
    probe(s, {}, candidate=LinearModel(message["weights"], message["bias"]))


def probe_for_round_2(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    probe(s, {"cli1": as_update(s.train())}, index=2)


def probe_before_the_update(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    probe(s, {}, candidate=LinearModel.zeros(len(FEATURES)))


def candidate_shown_to_this_client_alone(s: Session) -> None:
    # A probe consistent in itself (cli1's update alone), and a block of cli1's and cli2's.
    s.welcome(scaffold_genesis(s, with_other=True))
    _, block = honest_round(s, alone=True, others=other_update(s, 0.0))
    s.send_block(block)


def forged_step(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    _, block = honest_round(s)
    search = dict(block.search, gradient=(0.0,) * SIZE)  # the correction the clients follow
    s.send_block(reseal(block, search=search))


def huge_candidate(s: Session) -> None:
    # cli2 (the server's own) signs a model of 1e100s: their FedAvg is a valid, huge candidate.
    s.welcome(scaffold_genesis(s, with_other=True))
    ((huge, _),) = other_update(s, 0.0, LinearModel(np.full(len(FEATURES), 1e100), 0.0)).values()
    probe(s, {"cli1": as_update(s.train()), "cli2": huge})


def first_two_probes(s: Session) -> tuple[dict, dict]:
    """A scaffold round of cli1 and cli2 (the server's own) probed twice as an honest server
    probes it when cli2 leaves at the probe; return cli1's update and cli2's."""
    s.welcome(scaffold_genesis(s, with_other=True))
    ours = as_update(s.train())
    ((theirs, _),) = other_update(s, 0.0, LinearModel(np.full(len(FEATURES), 0.5), 1.0)).values()
    probe(s, {"cli1": ours, "cli2": theirs})
    probe(s, {"cli1": ours}, left=["cli2"])
    return ours, theirs


def candidate_elsewhere(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    probe(s, {"cli1": as_update(s.train())}, candidate=LinearModel(np.ones(len(FEATURES)), 0.0))


def probe_without_our_update(s: Session) -> None:
    s.welcome(scaffold_genesis(s, with_other=True))
    s.train()
    probe(s, {"cli2": other_update(s, 0.0)["cli2"][0]})


def probe_with_a_forged_update(s: Session) -> None:
    # cli2's update with another model under its signature: any point the server likes.
    s.welcome(scaffold_genesis(s, with_other=True))
    ((theirs, _),) = other_update(s, 0.0).values()
    forged = replace(theirs, model=LinearModel(np.full(len(FEATURES), 3.0), 0.0))
    probe(s, {"cli1": as_update(s.train()), "cli2": forged})


def second_probe_naming_no_departure(s: Session) -> None:
    # A client that joins adds a point of the server's choosing; only a departure may.
    s.welcome(scaffold_genesis(s, with_other=True))
    ours = as_update(s.train())
    probe(s, {"cli1": ours})
    probe(s, {"cli1": ours, "cli2": other_update(s, 0.0)["cli2"][0]})


def second_probe_naming_a_stranger(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    ours = as_update(s.train())
    probe(s, {"cli1": ours})
    probe(s, {"cli1": ours}, left=["cli9"])


def second_probe_changing_who_stayed(s: Session) -> None:
    # cli2 signs a second update for the round; the server says no one left and shows it.
    s.welcome(scaffold_genesis(s, with_other=True))
    ours = as_update(s.train())
    probe(s, {"cli1": ours, "cli2": other_update(s, 0.0)["cli2"][0]})
    probe(s, {"cli1": ours, "cli2": other_update(s, 1.0)["cli2"][0]})


def malformed_updates(s: Session) -> None:
    s.welcome(scaffold_genesis(s))
    s.train()
    s.send(
        {
            "type": "probe",
            "round": 1,
            "weights": np.zeros(len(FEATURES)),
            "bias": 0.0,
            "updates": "[]",
            "left": [],
        }
    )


def third_probe(s: Session) -> None:
    ours, _ = first_two_probes(s)
    probe(s, {"cli1": ours}, left=["cli2"])


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
    "a candidate elsewhere": (
        candidate_elsewhere,
        "the server's candidate for round 1 is not the FedAvg of the updates its probe shows",
    ),
    "a probe without our update": (
        probe_without_our_update,
        "the server's probe for round 1 does not show our update as we sent it",
    ),
    "a probe with a forged update": (
        probe_with_a_forged_update,
        "the server's probe for round 1 shows an update of cli2 that it did not sign for this "
        "round",
    ),
    "malformed updates": (
        malformed_updates,
        "the server's probe for round 1 shows malformed updates: updates must be a JSON dict",
    ),
    "a second probe naming no departure": (
        second_probe_naming_no_departure,
        "the server probed round 1 a second time at another point, naming no client that left "
        "since its first probe",
    ),
    "a second probe naming a stranger": (
        second_probe_naming_a_stranger,
        "the server's second probe of round 1 says cli9 left, but its first probe did not show "
        "them",
    ),
    "a second probe changing who stayed": (
        second_probe_changing_who_stayed,
        "the server's second probe of round 1 drops or changes the updates of cli2, which it "
        "does not say left",
    ),
    "a third probe": (
        third_probe,
        "the server probed round 1 a third time: a client answers at most 2 probes a round",
    ),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_the_client_refuses_a_scaffold_server_that_lies(tmp_path, lie):
    script, expected = LIES[lie]
    failure = play(new_client(tmp_path / "cli1.jsonl", []), script)
    assert failure is not None and expected in str(failure)  # anything else would propagate


def what_gradients_tell(points, gradients) -> tuple[np.ndarray, np.ndarray]:
    """The linear system a server can build for the curvature H = (2/n) ZᵀZ (Z: the client's
    rows with a column of ones, so H holds XᵀX/n) from a client's gradients at POINTS: H times
    each point's step from the first is the change of the gradient. The unknowns are H's
    entries on and above its diagonal, as H is symmetric; return the system and its right side."""
    size = len(points[0])
    entries = [(r, c) for r in range(size) for c in range(r, size)]
    column = {pair: i for i, pair in enumerate(entries)}
    rows, changes = [], []
    for point, at_point in zip(points[1:], gradients[1:], strict=True):
        step = point - points[0]
        for r in range(size):
            row = np.zeros(len(entries))
            for c in range(size):
                row[column[min(r, c), max(r, c)]] += step[c]
            rows.append(row)
        changes.extend(at_point - gradients[0])
    return np.array(rows), np.array(changes)


def as_vector(model: LinearModel) -> np.ndarray:
    return np.append(model.weights, model.bias)


def test_a_server_asking_fourteen_times_gets_two_answers_that_leave_xtx_undetermined(tmp_path):
    # The review's attack: answers at points of the server's choosing solve the client's
    # XᵀX/n and Xᵀy/n. This server asks 14 times: as an honest server would (cli2, its own,
    # leaving at the first probe), then a step along each weight from there.
    heard: dict = {"asked": [], "points": [], "gradients": []}

    def ask(s: Session) -> None:
        s.welcome(scaffold_genesis(s, with_other=True))
        update = s.train()
        heard["points"].append(as_vector(s.last.server_model))  # the update's gradient is there
        heard["gradients"].append(update["gradient"])
        ours = as_update(update)
        ((theirs, _),) = other_update(
            s, 0.0, LinearModel(np.full(len(FEATURES), 0.5), 1.0)
        ).values()
        asks = [({"cli1": ours, "cli2": theirs}, None, ()), ({"cli1": ours}, None, ["cli2"])]
        alone = probe_point(("cli1",), {"cli1": ours})
        for k in range(12):
            weights = alone.weights.copy()
            weights[k] += 1.0
            asks.append(({"cli1": ours}, LinearModel(weights, alone.bias), ["cli2"]))
        asks = [(u, c or probe_point(tuple(u), u), left) for u, c, left in asks]
        heard["asked"] = [as_vector(candidate) for _, candidate, _ in asks]
        for updates, candidate, left in asks:
            try:
                answer = probe(s, updates, candidate=candidate, left=left)
            except ConnectionClosed:
                break  # the client refused, and said why
            heard["points"].append(as_vector(candidate))
            heard["gradients"].append(answer["gradient"])

    failure = play(new_client(tmp_path / "cli1.jsonl", []), ask)
    assert "the server probed round 1 a third time" in str(failure)
    assert len(heard["asked"]) == 14
    assert len(heard["gradients"]) == 1 + 2  # the update's, and two answers
    size = len(FEATURES) + 1
    unknowns = size * (size + 1) // 2  # H is symmetric
    # What the answers tell: H along two directions, one equation short of twice its size.
    system, changes = what_gradients_tell(heard["points"], heard["gradients"])
    assert np.linalg.matrix_rank(system) == 2 * size - 1 < unknowns
    # Concretely: the client's own H, and H plus a rank-one PSD term across both directions,
    # are two different PSD matrices that fit the answers alike.
    rows = load_dataset(ROOT / "data" / "client1.csv")
    Z = np.column_stack([rows.X, np.ones(rows.n_samples)])
    H = 2.0 * Z.T @ Z / rows.n_samples
    steps = np.array(heard["points"][1:]) - heard["points"][0]
    v = np.linalg.svd(steps)[2][-1]  # orthogonal to both steps
    other = H + np.trace(H) * np.outer(v, v)
    assert not np.allclose(other, H) and np.linalg.eigvalsh(other).min() > -1e-9
    for curvature in (H, other):
        fitted = system @ curvature[np.triu_indices(size)]
        assert np.allclose(fitted, changes, rtol=1e-9, atol=1e-9 * np.abs(changes).max())
    # Answered at every point it asked at (as before this fix), the server would have H whole.
    problem = LocalProblem.from_data(rows.X, rows.y)
    points = [heard["points"][0], *heard["asked"]]
    at = [gradient(problem, LinearModel(p[:-1], float(p[-1]))) for p in points]
    assert np.linalg.matrix_rank(what_gradients_tell(points, at)[0]) == unknowns


def test_a_server_that_reconnects_gets_no_more_answers_in_the_round(tmp_path):
    # Two answers, then the connection is "lost" and the round asked again from the start.
    kept: dict = {}

    def first(s: Session) -> None:
        kept["ours"], _ = first_two_probes(s)
        kept["genesis"] = s.genesis
        crash()

    def again(s: Session) -> None:
        s.welcome(kept["genesis"])
        assert as_update(s.train()) == kept["ours"]  # the same update: the same round
        probe(s, {"cli1": kept["ours"]}, left=["cli2"])

    # The client connects again as one that lost its server does (tested with a process in
    # test_client_against_bad_server.py), holding what it answered.
    failure = play(new_client(tmp_path / "cli1.jsonl", []), [first, again])
    assert "the server probed round 1 a third time" in str(failure)
