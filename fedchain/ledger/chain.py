"""A chain in memory: the genesis and round blocks are made here, and every block is verified
against the last one as it is appended (and written to disk first, if the chain has a file).

The server, each client's replica and the verifier all grow a chain through Chain.append, so the
rules and the record of each client's sample count live in one place.
"""

import time
from collections.abc import Sequence

from fedchain.learning.aggregation import fedavg
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import AGGREGATION_FEDAVG, ZERO_HASH, Block, ClientUpdate
from fedchain.ledger.mining import seal
from fedchain.ledger.store import ChainWriter
from fedchain.ledger.verification import (
    ChainError,
    verify_genesis,
    verify_genesis_fields,
    verify_next,
)


class Chain:
    """Verified blocks from the genesis on, each on disk (when STORE is given) before it is kept."""

    def __init__(
        self, genesis: Block, *, store: ChainWriter | None = None, min_difficulty: int = 0
    ) -> None:
        verify_genesis(genesis, min_difficulty=min_difficulty)
        self.store = store
        self.blocks: list[Block] = []
        self.sample_counts: dict[str, int] = {}  # each client's rows, as first recorded
        self._keep(genesis)

    @property
    def genesis(self) -> Block:
        return self.blocks[0]

    @property
    def last(self) -> Block:
        return self.blocks[-1]

    def append(self, block: Block) -> None:
        """Verify BLOCK against the last block, write it (OSError if that fails), keep it."""
        verify_next(self.last, block, genesis=self.genesis, sample_counts=self.sample_counts)
        self._keep(block)

    def _keep(self, block: Block) -> None:
        if self.store is not None:
            self.store.append(block)
        self.blocks.append(block)
        self.sample_counts |= block.sample_counts()


def verify_chain(blocks: Sequence[Block], *, min_difficulty: int = 0) -> None:
    """Raise ChainError naming the first block that is wrong; return if the chain is valid."""
    if not blocks:
        raise ChainError(0, "the chain is empty: no genesis block")
    chain = Chain(blocks[0], min_difficulty=min_difficulty)
    for block in blocks[1:]:
        chain.append(block)


def make_genesis(
    *, initial_model: LinearModel, feature_names: Sequence[str], difficulty: int
) -> Block:
    """Mine block 0, which records the run's parameters and its starting global model."""
    genesis = Block(
        index=0,
        timestamp=time.time(),
        previous_hash=ZERO_HASH,
        difficulty=difficulty,
        feature_names=tuple(feature_names),
        aggregation=AGGREGATION_FEDAVG,
        cli=(),
        client_model={},
        server_model=initial_model,
    )
    verify_genesis_fields(genesis)
    return seal(genesis)


def make_round_block(previous: Block, updates: dict[str, ClientUpdate]) -> Block:
    """Mine the block after PREVIOUS: the clients' updates (in dict order) and their FedAvg."""
    cli = tuple(updates)
    block = Block(
        index=previous.index + 1,
        timestamp=max(time.time(), previous.timestamp),  # a clock stepped back stays monotonic
        previous_hash=previous.hash,
        difficulty=previous.difficulty,
        feature_names=previous.feature_names,
        aggregation=previous.aggregation,
        cli=cli,
        client_model=dict(updates),
        server_model=fedavg([(updates[c].model, updates[c].n_samples) for c in cli]),
    )
    return seal(block)
