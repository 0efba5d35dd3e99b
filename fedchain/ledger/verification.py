"""The rules a block must satisfy: the genesis on its own, and every later block against the one
before it. Every check names the block by its position, so a forged `index` cannot shift blame.
"""

from collections.abc import Mapping
from typing import NoReturn

from fedchain.learning.aggregation import fedavg
from fedchain.ledger.block import FORMAT_VERSION, KNOWN_AGGREGATIONS, ZERO_HASH, Block, compute_hash
from fedchain.ledger.mining import meets_difficulty


class ChainError(ValueError):
    """A chain that fails verification: the first bad block's index and the reason."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"block {index}: {reason}")
        self.index = index
        self.reason = reason


def verify_genesis(genesis: Block, *, min_difficulty: int = 0) -> None:
    """Check block 0: its own fields, its hash and its proof of work."""
    verify_genesis_fields(genesis)
    _verify_seal(0, genesis)
    # Anyone can re-mine a forged chain at difficulty 0; a verifier says what work it expects.
    if genesis.difficulty < min_difficulty:
        raise ChainError(
            0, f"difficulty {genesis.difficulty} is below the required {min_difficulty}"
        )


def verify_genesis_fields(genesis: Block) -> None:
    """Check block 0's fields, before it is mined or after."""

    def fail(reason: str) -> NoReturn:
        raise ChainError(0, reason)  # it sits first, whatever its index field claims

    if genesis.version != FORMAT_VERSION:
        fail(f"format version {genesis.version} is not one this program knows")
    if genesis.index != 0:
        fail("the first block must be the genesis block, index 0")
    if genesis.previous_hash != ZERO_HASH:
        fail("the genesis block must have an all-zero previous_hash")
    if genesis.cli:
        fail("the genesis block must have no client models")
    if genesis.aggregation not in KNOWN_AGGREGATIONS:
        fail(f"unknown aggregation rule {genesis.aggregation!r}")
    if not genesis.feature_names:
        fail("the genesis block must name the features")
    _verify_model_sizes(0, genesis)


def verify_next(
    previous: Block, block: Block, *, genesis: Block, sample_counts: Mapping[str, int]
) -> None:
    """Check that BLOCK is a valid successor of PREVIOUS in the chain that GENESIS starts;
    SAMPLE_COUNTS holds each client's row count as the chain so far first recorded it."""

    position = previous.index + 1  # named by where it sits, even if its index field lies

    def fail(reason: str) -> NoReturn:
        raise ChainError(position, reason)

    if block.version != FORMAT_VERSION:
        fail(f"format version {block.version} is not one this program knows")
    if block.index != position:
        fail(f"index is {block.index}, but it follows block {previous.index}")
    if block.previous_hash != previous.hash:
        fail(f"previous_hash does not match the hash of block {previous.index}")
    _verify_seal(position, block)
    if block.difficulty < previous.difficulty:  # and so never below the genesis's
        fail(
            f"difficulty {block.difficulty} is below block {previous.index}'s {previous.difficulty}"
        )
    if block.timestamp < previous.timestamp:
        fail(f"timestamp goes back in time from block {previous.index}")
    if block.feature_names != genesis.feature_names:
        fail("feature_names differ from the genesis block's")
    if block.aggregation != genesis.aggregation:
        fail(f"aggregation {block.aggregation!r} differs from the genesis's")
    if not block.cli:
        fail("a round block must hold at least one client model")
    for name, n_samples in block.sample_counts().items():
        # A client's rows are fixed for a run; a changed count would reweigh the average.
        if sample_counts.get(name, n_samples) != n_samples:
            fail(f"{name}'s n_samples changed from {sample_counts[name]} earlier in the chain")
    _verify_model_sizes(position, block)
    try:
        average = fedavg(block.updates_in_order())
    except ValueError as error:
        fail(f"the client models cannot be averaged: {error}")
    if average != block.server_model:
        fail("server_model is not the FedAvg of the client models")


def _verify_seal(position: int, block: Block) -> None:
    if compute_hash(block) != block.hash:
        raise ChainError(position, "hash does not match the block's contents")
    if not meets_difficulty(block.hash, block.difficulty):
        raise ChainError(position, f"hash does not meet difficulty {block.difficulty} bits")


def _verify_model_sizes(position: int, block: Block) -> None:
    expected = len(block.feature_names)
    models = [("server_model", block.server_model)]
    models += [(f"client {name}", block.client_model[name].model) for name in block.cli]
    for where, model in models:
        if model.n_features != expected:
            raise ChainError(
                position, f"{where} has {model.n_features} weights for {expected} features"
            )
