"""Small real chains for the ledger tests, signed with fixed keys and mined at a low difficulty
so they build quickly."""

import hashlib
from dataclasses import replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block, ClientUpdate, RunRecord, TargetRecord, TrainingSettings
from fedchain.ledger.chain import make_closing_block, make_genesis, make_round_block
from fedchain.ledger.mining import seal
from fedchain.ledger.signatures import (
    attestation_message,
    block_message,
    sign_hex,
    update_message,
)
from fedchain.trust.keys import public_hex, sign

FEATURES = ("age", "bmi", "smoker")
DIFFICULTY = 8
CLIENTS = {"cli1": 535, "cli2": 97}
TRAINING = TrainingSettings(seed=7, generations=150, population=40)


def fixed_key(label: str) -> Ed25519PrivateKey:
    """A key that is the same in every test run, so failures reproduce."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


SERVER_KEY = fixed_key("server")
CLIENT_KEYS = {name: fixed_key(name) for name in CLIENTS}


def run_record(rounds: int, clients=CLIENT_KEYS, server_key=SERVER_KEY) -> RunRecord:
    participants = {name: public_hex(key) for name, key in clients.items()}
    return RunRecord(rounds, 0, public_hex(server_key), participants)


def genesis_for(
    rounds: int,
    features=FEATURES,
    initial=None,
    server_key=SERVER_KEY,
    client_keys=CLIENT_KEYS,
    target: TargetRecord | None = None,
) -> Block:
    return make_genesis(
        initial_model=initial or LinearModel.zeros(len(features)),
        feature_names=features,
        difficulty=DIFFICULTY,
        run=replace(run_record(rounds, client_keys, server_key), target=target),
        server_key=server_key,
    )


def signed_update(
    genesis: Block,
    previous: Block,
    name: str,
    model: LinearModel,
    n_samples: int,
    key: Ed25519PrivateKey | None = None,
    index: int | None = None,
) -> ClientUpdate:
    """NAME's update for the round after PREVIOUS, signed as a real client signs it."""
    unsigned = ClientUpdate(model, n_samples, training=TRAINING)
    message = update_message(
        genesis_hash=genesis.hash,
        index=previous.index + 1 if index is None else index,
        previous_hash=previous.hash,
        name=name,
        update=unsigned,
    )
    signature = sign_hex(key or CLIENT_KEYS[name], message)
    return ClientUpdate(model, n_samples, training=TRAINING, signature=signature)


def attest(genesis: Block, block: Block, names=tuple(CLIENTS), keys=CLIENT_KEYS) -> dict[str, str]:
    message = attestation_message(genesis_hash=genesis.hash, block=block)
    return {name: sign_hex(keys[name], message) for name in names}


def next_round(
    genesis: Block,
    previous: Block,
    rng,
    clients=CLIENTS,
    server_key=SERVER_KEY,
    client_keys=CLIENT_KEYS,
) -> Block:
    updates = {}
    for name, n in clients.items():
        model = LinearModel(rng.normal(size=len(FEATURES)), rng.normal())
        updates[name] = signed_update(genesis, previous, name, model, n, key=client_keys[name])
    attestations = (
        attest(genesis, previous, tuple(clients), client_keys) if previous.index > 0 else {}
    )
    missing = {name: "sat this round out" for name in CLIENTS if name not in clients}
    return make_round_block(
        previous, updates, attestations=attestations, server_key=server_key, missing=missing
    )


def build_chain(
    rounds: int = 3,
    seed: int = 0,
    *,
    closed: bool = False,
    server_key=SERVER_KEY,
    client_keys=CLIENT_KEYS,
    target: TargetRecord | None = None,
) -> list[Block]:
    """A valid signed chain of ROUNDS rounds (and its closing block, if CLOSED), signed by
    SERVER_KEY and CLIENT_KEYS (the fixed ones unless a test plays a forger with its own), in
    format 10 if it names its TARGET, else 2."""
    rng = np.random.default_rng(seed)
    keys = {"server_key": server_key, "client_keys": client_keys}
    blocks = [genesis_for(rounds, target=target, **keys)]
    for _ in range(rounds):
        blocks.append(next_round(blocks[0], blocks[-1], rng, **keys))
    if closed:
        attestations = attest(blocks[0], blocks[-1], keys=client_keys)
        blocks.append(
            make_closing_block(blocks[-1], attestations=attestations, server_key=server_key)
        )
    return blocks


def reseal(block: Block, **changes) -> Block:
    """BLOCK with CHANGES, mined and signed again by the server: what a lying server can do."""
    changed = replace(block, **changes)
    sealed = seal(changed)
    return replace(sealed, server_signature=sign_hex(SERVER_KEY, block_message(sealed.hash)))


def signed_update_message(
    name: str,
    key: Ed25519PrivateKey,
    weights: np.ndarray,
    n_samples: int,
    *,
    genesis: Block,
    previous: Block,
    index: int,
    round: int,
    attestation: bytes,
    gradient=None,
) -> dict:
    """The `update` message a client NAME sends for ROUND: WEIGHTS (bias 0) trained with
    TRAINING, signed with KEY as round INDEX after PREVIOUS in GENESIS's run (a forger's
    arguments may differ from ROUND's), with its ATTESTATION and, for scaffold, its start
    GRADIENT."""
    sent_gradient = () if gradient is None else tuple(map(float, gradient))
    update = ClientUpdate(
        LinearModel(weights, 0.0), n_samples, training=TRAINING, gradient=sent_gradient
    )
    signed = update_message(
        genesis_hash=genesis.hash,
        index=index,
        previous_hash=previous.hash,
        name=name,
        update=update,
    )
    message = {
        "type": "update",
        "round": round,
        "weights": weights,
        "bias": 0.0,
        "n_samples": n_samples,
        "metrics": {},
        "seed": TRAINING.seed,
        "generations": TRAINING.generations,
        "population": TRAINING.population,
        "signature": sign(key, signed),
        "attestation": attestation,
    }
    if gradient is not None:
        message["gradient"] = np.asarray(gradient, dtype=np.float64)
    return message
