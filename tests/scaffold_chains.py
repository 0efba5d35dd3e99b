"""Signed scaffold chains (format 4) built in-process: three clients on non-IID rows, each round's
updates with their gradients and signed answers to the probe, for the chain tests to verify and
tamper with."""

from dataclasses import replace

import numpy as np
from chain_helpers import DIFFICULTY, FEATURES, SERVER_KEY, TRAINING, fixed_key

from fedchain.learning.aggregation import PROXIMAL, SCAFFOLD
from fedchain.learning.corrected_training import gradient
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.local_training import LocalProblem
from fedchain.ledger.block import ClientUpdate, RunRecord
from fedchain.ledger.chain import make_genesis, make_round_block
from fedchain.ledger.correction import probe_point
from fedchain.ledger.signatures import attestation_message, probe_message, sign_hex, update_message
from fedchain.trust.keys import public_hex

NAMES = ("s1", "s2", "s3")
KEYS = {name: fixed_key(name) for name in NAMES}


def rows(seed):
    """Each client's rows: the columns' ranges differ between clients, as in a non-IID split."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=seed, scale=1 + seed, size=(40, len(FEATURES)))
    return LocalProblem.from_data(X, X @ [1.0, -2.0, 0.5] + 3.0 + rng.normal(size=40))


PROBLEMS = {name: rows(i) for i, name in enumerate(NAMES)}


def floats(vector):
    return tuple(map(float, vector))


TRAINED = ClientUpdate(LinearModel.zeros(len(FEATURES)), 1, training=TRAINING)


def genesis(*, parameters=None, aggregation=SCAFFOLD):
    run = RunRecord(3, 0, public_hex(SERVER_KEY), {n: public_hex(k) for n, k in KEYS.items()})
    return make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=run,
        server_key=SERVER_KEY,
        aggregation=aggregation,
        parameters={PROXIMAL: 0.3} if parameters is None else parameters,
    )


def updates_for(first, previous, rng, names=NAMES):
    """Each client's signed update (a model near the start, its gradient at the start) and its
    signed answer to the probe at the candidate those models make."""
    start, index = previous.server_model, previous.index + 1
    updates = {}
    for name in names:
        model = LinearModel(start.weights + rng.normal(size=3), start.bias + rng.normal())
        unsigned = replace(
            TRAINED,
            model=model,
            n_samples=len(PROBLEMS[name].y),
            gradient=floats(gradient(PROBLEMS[name], start)),
        )
        message = update_message(
            genesis_hash=first.hash,
            index=index,
            name=name,
            previous_hash=previous.hash,
            update=unsigned,
        )
        updates[name] = replace(unsigned, signature=sign_hex(KEYS[name], message))
    candidate = probe_point(names, updates)
    for name in names:
        updates[name] = probed(first, previous, name, updates[name], candidate)
    return updates


def probed(first, previous, name, update, candidate, at=None):
    at_candidate = floats(gradient(PROBLEMS[name], candidate)) if at is None else at
    message = probe_message(
        genesis_hash=first.hash,
        index=previous.index + 1,
        previous_hash=previous.hash,
        name=name,
        candidate=candidate,
        gradient=at_candidate,
    )
    return replace(
        update, probe_gradient=at_candidate, probe_signature=sign_hex(KEYS[name], message)
    )


def attested(first, block):
    message = attestation_message(genesis_hash=first.hash, block=block)
    return {name: sign_hex(KEYS[name], message) for name in NAMES} if block.index else {}


def build(rounds=3, seed=0, names_by_round=None):
    rng = np.random.default_rng(seed)
    blocks = [genesis()]
    for r in range(rounds):
        names = NAMES if names_by_round is None else names_by_round[r]
        updates = updates_for(blocks[0], blocks[-1], rng, names)
        attestations = {n: a for n, a in attested(blocks[0], blocks[-1]).items() if n in names}
        missing = {n: "disconnected (test)" for n in NAMES if n not in names}
        blocks.append(
            make_round_block(
                blocks[-1],
                updates,
                attestations=attestations,
                server_key=SERVER_KEY,
                missing=missing,
            )
        )
    return blocks
