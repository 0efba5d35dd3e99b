"""A scaffold round block's step, worked out from the chain: what the server writes, what every
verifier recomputes, and what the next round's clients correct their training by."""

from collections.abc import Mapping, Sequence

import numpy as np

from fedchain.learning.linear_model import LinearModel
from fedchain.learning.scaffold import Contribution, SearchRecord, candidate, settle
from fedchain.ledger.block import Block, ClientUpdate


def contributions(cli: Sequence[str], updates: Mapping[str, ClientUpdate]) -> list[Contribution]:
    """The updates of CLI, in that order, as the rule reads them."""
    return [
        Contribution(
            updates[c].model, updates[c].n_samples, updates[c].gradient, updates[c].probe_gradient
        )
        for c in cli
    ]


def probe_point(cli: Sequence[str], updates: Mapping[str, ClientUpdate]) -> LinearModel:
    """The round's candidate, where the clients are asked for their gradients: FedAvg."""
    return candidate(contributions(cli, updates))


def corrected_step(
    previous: Block, cli: Sequence[str], updates: Mapping[str, ClientUpdate]
) -> tuple[LinearModel, dict[str, tuple[float, ...]]]:
    """The global model and search record of the round block after PREVIOUS."""
    memory = _memory(previous, cli)
    model, record = settle(previous.server_model, memory, contributions(cli, updates))
    return model, record.as_record()


def global_gradient(block: Block) -> np.ndarray | None:
    """The gradient of the pooled MSE at BLOCK's global model that the next round's clients
    correct by; None after the genesis, where the first round trains plainly."""
    return np.array(block.search["gradient"]) if block.search else None


def _memory(previous: Block, cli: Sequence[str]) -> SearchRecord | None:
    """The previous round's step, if it was taken with the same clients: with others, the pooled
    MSE it measured the curvature of is not this round's."""
    if previous.index == 0 or not previous.cli or set(previous.cli) != set(cli):
        return None
    return SearchRecord.from_record(previous.search, len(previous.feature_names) + 1)
