"""A raw client's part in a scaffold round, done by hand: its update with a start gradient, and
the wait for the server's probe."""

import numpy as np
from chain_helpers import TRAINING
from raw_peers import FEATURES, N_SAMPLES, RawClient
from wire_helpers import receive

from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import ClientUpdate
from fedchain.ledger.signatures import update_message
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


def next_of(raw: RawClient, kind: str) -> dict:
    message = receive(raw.sock)
    while message["type"] == "waiting":
        message = receive(raw.sock)
    assert message["type"] == kind, message
    return message
