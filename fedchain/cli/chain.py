"""The chain's command line: `python blockchain.py show|verify PATH`, or `fedchain-chain`.

`show` prints a chain for a person; `verify` checks every link, hash, proof of work and average,
and names the first block that is wrong.
"""

import argparse
import sys
from collections.abc import Sequence

from fedchain.cli.arguments import integer_in
from fedchain.cli.console import say
from fedchain.ledger.block import MAX_DIFFICULTY_BITS
from fedchain.ledger.report import report_chain
from fedchain.ledger.store import ChainFileError, load_chain

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show or verify a chain file of a federated run.")
    parser.add_argument("command", choices=["show", "verify"])
    parser.add_argument("path", help="a chain file (JSON Lines)")
    parser.add_argument(
        "--min-difficulty", type=integer_in(0, MAX_DIFFICULTY_BITS), default=0,
        help="refuse a chain mined at fewer bits than this (a forger can re-mine at 0)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        loaded = load_chain(args.path)
    except ChainFileError as error:
        say(f"invalid: {error}")
        return EXIT_INVALID
    except OSError as error:
        print(f"error: cannot read {args.path}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    if loaded.dropped_tail:
        print(f"warning: {args.path}: {loaded.dropped_tail}", file=sys.stderr)
    valid = report_chain(
        loaded.blocks,
        say,
        show_blocks=args.command == "show",
        min_difficulty=args.min_difficulty,
    )
    return EXIT_OK if valid else EXIT_INVALID


if __name__ == "__main__":
    raise SystemExit(main())
