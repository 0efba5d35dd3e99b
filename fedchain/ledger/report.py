"""A chain shown to a person: a few lines a block, and the verdict of verification."""

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from fedchain.ledger.block import Block
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.verification import ChainError

SHOWN_WEIGHTS = 16  # per block; a wide model would otherwise bury the rest


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
