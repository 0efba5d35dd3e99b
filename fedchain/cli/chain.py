"""The chain's command line: `python blockchain.py show|verify PATH`, `compare A B`, or
`fedchain-chain`.

`show` prints a chain for a person; `verify` checks every link, hash, proof of work, average and
signature, and names the first block that is wrong; `compare` finds where two copies part and
whether that proves the server signed two different blocks.
"""

import argparse
import sys
from collections.abc import Sequence

from fedchain.cli.arguments import integer_in
from fedchain.cli.console import quiet_on_broken_pipe, say, shown
from fedchain.ledger.block import MAX_DIFFICULTY_BITS, Block
from fedchain.ledger.compare import compare_chains
from fedchain.ledger.report import Verdict, report_chain
from fedchain.ledger.store import ChainFileError, load_chain

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_DIVERGED, EXIT_EQUIVOCATION = 4, 5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Show, verify or compare chain files.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("verify", "check a chain; exit 0 valid and complete, 1 invalid, 3 incomplete"),
        ("show", "print every block, then verify"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("path", help="a chain file (JSON Lines)")
        command.add_argument(
            "--min-difficulty", type=integer_in(0, MAX_DIFFICULTY_BITS), default=0,
            help="refuse a chain mined at fewer bits than this (a forger can re-mine at 0)",
        )  # fmt: skip
        command.add_argument(
            "--require-signed", action="store_true",
            help="refuse an unsigned (format-1) chain: anyone can re-mine one",
        )  # fmt: skip
    compare = commands.add_parser(
        "compare", help="where two copies part; exit 0 if one extends the other, 4 if they "
        "part, 5 if the server signed both versions (proof of equivocation)",
    )  # fmt: skip
    compare.add_argument("first")
    compare.add_argument("second")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return quiet_on_broken_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if args.command == "compare":
        first, second = _load(args.first), _load(args.second)
        if isinstance(first, int) or isinstance(second, int):
            return first if isinstance(first, int) else second
        comparison = compare_chains(first, second)
        say(comparison.summary)
        if comparison.index is None:
            return EXIT_OK
        return EXIT_EQUIVOCATION if comparison.equivocation else EXIT_DIVERGED
    blocks = _load(args.path)
    if isinstance(blocks, int):
        return blocks
    verdict = report_chain(
        blocks, say, show_blocks=args.command == "show", min_difficulty=args.min_difficulty,
        require_signed=args.require_signed,
    )  # fmt: skip
    return {Verdict.VALID: EXIT_OK, Verdict.INCOMPLETE: EXIT_INCOMPLETE}.get(verdict, EXIT_INVALID)


def _load(path: str) -> list[Block] | int:
    """The blocks of PATH, or the exit code after saying why they cannot be read."""
    try:
        loaded = load_chain(path)
    except ChainFileError as error:
        say(f"invalid: {shown(error)}")
        return EXIT_INVALID
    except OSError as error:
        print(f"error: cannot read {path}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    if loaded.dropped_tail:
        print(f"warning: {path}: {loaded.dropped_tail}", file=sys.stderr)
    return loaded.blocks


if __name__ == "__main__":
    raise SystemExit(main())
