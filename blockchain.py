"""The federated run's ledger: make the genesis and round blocks, verify a chain, and show it.

`python blockchain.py show PATH` prints a chain for a person; `python blockchain.py verify PATH`
checks every link, hash, proof of work and average, and names the first block that is wrong.
"""

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import NoReturn

from block import (
    AGGREGATION_FEDAVG,
    FORMAT_VERSION,
    KNOWN_AGGREGATIONS,
    ZERO_HASH,
    Block,
    ClientUpdate,
    compute_hash,
    meets_difficulty,
    seal,
)
from chain_store import ChainFileError, load_chain
from cli_types import integer_in
from model import LinearModel, fedavg

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2
SHOWN_WEIGHTS = 16  # per block in `show`; a wide model would otherwise bury the rest


class ChainError(ValueError):
    """A chain that fails verification: the first bad block's index and the reason."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"block {index}: {reason}")
        self.index = index
        self.reason = reason


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


def verify_chain(blocks: Sequence[Block], *, min_difficulty: int = 0) -> None:
    """Raise ChainError naming the first block that is wrong; return if the chain is valid."""
    if not blocks:
        raise ChainError(0, "the chain is empty: no genesis block")
    verify_genesis(blocks[0])
    # Anyone can re-mine a forged chain at difficulty 0; a verifier says what work it expects.
    if blocks[0].difficulty < min_difficulty:
        raise ChainError(
            0, f"difficulty {blocks[0].difficulty} is below the required {min_difficulty}"
        )
    sample_counts: dict[str, int] = {}
    for previous, block in itertools.pairwise(blocks):
        verify_next(previous, block, genesis=blocks[0], sample_counts=sample_counts)
        sample_counts |= sample_counts_of(block)


def sample_counts_of(block: Block) -> dict[str, int]:
    """Each contributing client's row count in BLOCK."""
    return {name: block.client_model[name].n_samples for name in block.cli}


def verify_genesis(genesis: Block) -> None:
    """Check block 0: its own fields, its hash and its proof of work."""
    verify_genesis_fields(genesis)
    _verify_seal(0, genesis)


def verify_genesis_fields(genesis: Block) -> None:
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
    for name, n_samples in sample_counts_of(block).items():
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


def format_block(block: Block) -> str:
    """A few lines describing BLOCK for a person."""
    try:
        when = datetime.fromtimestamp(block.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):  # shown as it is; verification judges it
        when = f"timestamp {block.timestamp!r}"
    kind = "genesis" if block.index == 0 else "round"
    clients = ", ".join(f"{c} ({block.client_model[c].n_samples} rows)" for c in block.cli)
    pairs = list(zip(block.feature_names, block.server_model.weights, strict=False))
    weights = "  ".join(f"{name}={w:.4g}" for name, w in pairs[:SHOWN_WEIGHTS])
    if len(pairs) > SHOWN_WEIGHTS:
        weights += f"  … (+{len(pairs) - SHOWN_WEIGHTS} more)"
    return "\n".join(
        [
            f"block {block.index} ({kind})  {when}  difficulty {block.difficulty}  "
            f"nonce {block.nonce}  hash {block.hash[:16]}…",
            f"  clients: {clients or 'none'}",
            f"  server model: bias={block.server_model.bias:.4g}  {weights}",
        ]
    )


def report_chain(
    blocks: Sequence[Block],
    say: Callable[[str], None],
    *,
    show_blocks: bool = True,
    min_difficulty: int = 0,
) -> bool:
    """Print the blocks (if asked) and the verification result; return whether it is valid."""
    if show_blocks:
        for block in blocks:
            say(format_block(block))
    try:
        verify_chain(blocks, min_difficulty=min_difficulty)
    except ChainError as error:
        say(f"invalid: {error}")
        return False
    say(f"valid: {len(blocks)} blocks")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blockchain.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["show", "verify"])
    parser.add_argument("path", help="a chain file (JSON Lines)")
    parser.add_argument(
        "--min-difficulty", type=integer_in(0, 64), default=0,
        help="refuse a chain mined at fewer bits than this (a forger can re-mine at 0)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        loaded = load_chain(args.path)
    except ChainFileError as error:
        print(f"invalid: {error}")
        return EXIT_INVALID
    except OSError as error:
        print(f"error: cannot read {args.path}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    if loaded.dropped_tail:
        print(f"warning: {args.path}: {loaded.dropped_tail}", file=sys.stderr)
    valid = report_chain(
        loaded.blocks,
        print,
        show_blocks=args.command == "show",
        min_difficulty=args.min_difficulty,
    )
    return EXIT_OK if valid else EXIT_INVALID


if __name__ == "__main__":
    raise SystemExit(main())
