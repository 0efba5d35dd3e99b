"""A raw client's part in a scaffold round, done by hand: its update with a start gradient, its
signed answer to the server's probe, and the wait for that probe."""

import numpy as np
from chain_helpers import TRAINING
from raw_peers import FEATURES, N_SAMPLES, RawClient
from wire_helpers import receive

from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import ClientUpdate
from fedchain.ledger.signatures import probe_message, update_message
from fedchain.trust.keys import sign


def update_with_gradient(raw: RawClient, gradient) -> dict:
    """A signed scaffold update from RAW: the zero model, with GRADIENT as its start gradient."""
    index = raw.last.index + 1
    update = ClientUpdate(
        LinearModel.zeros(len(FEATURES)),
        N_SAMPLES,
        training=TRAINING,
        gradient=tuple(map(float, gradient)),
    )
    signed = update_message(
        genesis_hash=raw.genesis.hash,
        index=index,
        previous_hash=raw.last.hash,
        name=raw.name,
        update=update,
    )
    message = raw.update()
    message["signature"] = sign(raw.key, signed)
    message["gradient"] = np.asarray(gradient, dtype=np.float64)
    return message


def answer(raw: RawClient, probe: dict, *, elsewhere: bool = False) -> dict:
    """RAW's signed gradient (zeros) at the probe's candidate, or at another point."""
    candidate = LinearModel(probe["weights"] + (1.0 if elsewhere else 0.0), probe["bias"])
    gradient = np.zeros(len(FEATURES) + 1)
    signed = probe_message(
        genesis_hash=raw.genesis.hash,
        index=probe["round"],
        previous_hash=raw.last.hash,
        name=raw.name,
        candidate=candidate,
        gradient=tuple(map(float, gradient)),
    )
    return {
        "type": "gradient",
        "round": probe["round"],
        "gradient": gradient,
        "signature": sign(raw.key, signed),
    }


def next_of(raw: RawClient, kind: str) -> dict:
    message = receive(raw.sock)
    while message["type"] == "waiting":
        message = receive(raw.sock)
    assert message["type"] == kind, message
    return message
