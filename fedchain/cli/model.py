"""`python model.py CHAIN [--round N]`: the global model a verified chain holds, for a person."""

import argparse
import sys
from collections.abc import Sequence

from fedchain.cli.arguments import integer_in
from fedchain.cli.console import quiet_on_broken_pipe, say, shown
from fedchain.ledger.block import MAX_DIFFICULTY_BITS
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.store import ChainFileError, load_chain
from fedchain.ledger.verification import ChainError

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    return quiet_on_broken_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the global model of a chain's round (default: the last), "
        "after verifying the chain.",
    )
    parser.add_argument("chain", help="a chain file (JSON Lines)")
    parser.add_argument("--round", type=integer_in(0), default=None, help="which round's model")
    parser.add_argument(
        "--min-difficulty", type=integer_in(0, MAX_DIFFICULTY_BITS), default=0,
        help="refuse a chain mined at fewer bits than this (a forger can re-mine at 0)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        blocks = load_chain(args.chain).blocks
        verify_chain(blocks, min_difficulty=args.min_difficulty)
    except (ChainFileError, ChainError) as error:
        print(f"error: {args.chain} does not verify: {shown(error)}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as error:
        print(f"error: cannot read {args.chain}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    # Round N's model is block N's; a closing block only repeats the last round's.
    last_round = max(block.index for block in blocks if block.cli or block.index == 0)
    index = last_round if args.round is None else args.round
    if index > last_round:
        print(f"error: {args.chain} has rounds 0..{last_round}, not {index}", file=sys.stderr)
        return EXIT_INVALID
    block = blocks[index]
    model = block.server_model
    say(f"global model of round {index} (block hash {block.hash[:16]}…), y = X·w + b:")
    width = max(len(name) for name in block.feature_names)
    for name, weight in zip(block.feature_names, model.weights, strict=True):
        say(f"  {name:<{width}}  {weight:+.6g}")
    say(f"  {'(bias)':<{width}}  {model.bias:+.6g}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
