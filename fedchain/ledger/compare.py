"""Two copies of a chain side by side: where they part, and whether that proves the server lied.

A server signs every block's hash. Two different blocks at the same index, both carrying valid
signatures by the key the shared genesis names, are a proof anyone can check that the server
told two stories (equivocation): no one else holds the key that made them.

Blocks are compared whole, every field as the chain file holds it, not by their stored hashes:
a copy altered after it was sealed keeps the hash it had.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from fedchain.ledger.block import Block, compute_hash
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.signatures import block_message, signature_holds
from fedchain.ledger.store import block_to_json
from fedchain.ledger.verification import ChainError


@dataclass(frozen=True)
class Comparison:
    index: int | None  # the first index at which the copies differ; None if one extends the other
    equivocation: bool  # both differing blocks are validly signed by the run's server
    summary: str


def compare_chains(a: Sequence[Block], b: Sequence[Block]) -> Comparison:
    """Find where A and B part, comparing every field of every block, and judge the two
    blocks there."""
    for index, (block_a, block_b) in enumerate(zip(a, b, strict=False)):
        if block_to_json(block_a) != block_to_json(block_b):
            return _judge(index, a[:index], block_a, block_b)
    if len(a) == len(b):
        return Comparison(None, False, f"the copies are the same {len(a)} blocks")
    shorter, longer = sorted((len(a), len(b)))
    which = "first" if len(a) > len(b) else "second"
    return Comparison(
        None, False, f"the copies agree on {shorter} blocks; the {which} goes on to {longer}"
    )


def _judge(index: int, shared: Sequence[Block], block_a: Block, block_b: Block) -> Comparison:
    if block_a.hash == block_b.hash:
        return Comparison(
            index,
            False,
            f"the copies part at block {index}: its contents differ under the same stored hash "
            f"{block_a.hash[:16]}…, so at least one copy was altered after the block was sealed; "
            "that is no proof against the server",
        )
    if index == 0:
        return Comparison(0, False, "the copies start from different genesis blocks: two runs")
    try:  # a proof stands on a shared history that verifies, whatever came after it
        verify_chain(shared)
    except ChainError as error:
        return Comparison(index, False, f"the blocks both copies hold do not verify: {error}")
    genesis, before = shared[0], shared[-1]
    if not block_a.previous_hash == block_b.previous_hash == before.hash:
        # A block that does not follow the shared history belongs to some other chain (another
        # run signed with the same key, say): it proves nothing about this one.
        return Comparison(
            index,
            False,
            f"the copies part at block {index}, but not both blocks there follow block "
            f"{before.index}; that is no proof against the server",
        )
    server_key = genesis.run.server_key if genesis.signed else None
    signed = [_signed_by(server_key, block) for block in (block_a, block_b)]
    if all(signed) and block_a.index == block_b.index == index:
        return Comparison(
            index,
            True,
            f"proof of equivocation: the server (key {server_key}) signed two different "
            f"blocks at index {index}: {block_a.hash} and {block_b.hash}",
        )
    unsigned = [name for name, ok in zip(("first", "second"), signed, strict=True) if not ok]
    return Comparison(
        index,
        False,
        f"the copies part at block {index}; the {' and the '.join(unsigned)} copy's block there "
        "is not validly signed by the run's server, so it proves nothing against the server",
    )


def _signed_by(server_key: str | None, block: Block) -> bool:
    return (
        server_key is not None
        and bool(block.server_signature)
        and compute_hash(block) == block.hash
        and signature_holds(server_key, block.server_signature, block_message(block.hash))
    )
