"""The chain's command line: `python blockchain.py show|verify PATH`, `compare A B`,
`export PATH`, `plot PATH`, `report PATH`, or `fedchain-chain`.

`show` prints a chain for a person; `verify` checks every link, hash, proof of work, average and
signature, and names the first block that is wrong; `compare` verifies two copies and finds where
they part and whether that proves the server signed two different blocks; `export` writes a
verified chain's global model as JSON; `plot` draws how a verified chain's run converged;
`report` writes a verified chain as one self-contained HTML page, the figure in it. Each
refuses an unsigned chain unless allowed, and a chain signed by another key than the one pinned.
"""

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedchain import settings
from fedchain.cli.arguments import (
    HelpFormatter,
    add_chain_reading_flags,
    add_output_flags,
    integer_in,
    parser_for,
)
from fedchain.cli.console import configure_output, quiet_on_broken_pipe, say, shown, warn
from fedchain.learning.dataset import DataError, Dataset, column_difference, load_dataset
from fedchain.learning.partition import pool
from fedchain.ledger.block import Block
from fedchain.ledger.chain import Chain, UntrustedChain, check_server_key, verify_chain
from fedchain.ledger.compare import compare_chains
from fedchain.ledger.report import Verdict, report_chain
from fedchain.ledger.store import ChainFileError, load_chain
from fedchain.ledger.verification import ChainError
from fedchain.results.history import MetricsError, last_round, model_of_round, read_metrics
from fedchain.results.target import chain_target, unit_line
from fedchain.trust.errors import TrustError

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_DIVERGED, EXIT_EQUIVOCATION = 4, 5
EXIT_REFUSED = 6  # valid, but unsigned (and not allowed) or not signed by the pinned key


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = parser_for(
        description="Show, verify or compare chain files; export a chain's model or plot its run."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        (
            "verify",
            "check a chain; exit 0 valid and complete, 1 invalid, 3 incomplete, "
            "6 refused (unsigned, or not signed by the pinned key)",
        ),
        ("show", "print every block, then verify"),
    ):
        command = commands.add_parser(name, help=help_text, formatter_class=HelpFormatter)
        command.add_argument("path", help="a chain file (JSON Lines)")
        add_chain_reading_flags(command, require_signed=True)
    compare = commands.add_parser(
        "compare",
        formatter_class=HelpFormatter,
        help="verify two copies, then where they part; exit 0 if one holds every "
        "block of the other, byte for byte, 4 if they part, 5 if the server signed both "
        "versions (proof of equivocation), 1 if a copy does not verify, 6 if one is refused",
    )
    compare.add_argument("first")
    compare.add_argument("second")
    add_chain_reading_flags(compare)
    export = commands.add_parser(
        "export",
        formatter_class=HelpFormatter,
        help="verify a chain, then write the global model of a round as JSON",
    )
    export.add_argument("path", help="a chain file (JSON Lines)")
    export.add_argument("--round", type=integer_in(0), default=None, help="default: the last")
    export.add_argument("-o", "--output", help="the model file to write (default: print it)")
    plot = commands.add_parser(
        "plot",
        formatter_class=HelpFormatter,
        help="verify a chain, then draw its errors and weights per round as a PNG",
    )
    plot.add_argument(
        "-o", "--output", type=png_path, default="convergence.png", help="the PNG to write"
    )
    report = commands.add_parser(
        "report",
        formatter_class=HelpFormatter,
        help="verify a chain, then write it as one self-contained HTML page: the run's "
        "settings, every block, each client's ε, the verdict and the figure",
    )
    report.add_argument("-o", "--output", default="report.html", help="the page to write")
    for command in (plot, report):
        command.add_argument("path", help="a chain file (JSON Lines)")
        command.add_argument(
            "--metrics",
            help="the server's metrics CSV of the same run: the clients' errors on "
            "their own rows and the test MSE the server measured",
        )
        command.add_argument(
            "--test",
            type=Path,
            default=None,
            help="held-out rows to score every model on (default: the bundled data/test.csv)",
        )
        command.add_argument(
            "--pooled",
            nargs="+",
            type=Path,
            metavar="CSV",
            help="the clients' rows: the global model is drawn against least squares fitted "
            "on them pooled",
        )
    for command in (export, plot, report):
        command.add_argument(
            "--target",
            default=None,
            help="the column the model predicts (default: the one the chain records; for a "
            f"chain older than format 10, which records none, {settings.TARGET})",
        )
        add_chain_reading_flags(command)
    for command in commands.choices.values():
        add_output_flags(command)
    return parser.parse_args(argv)


def png_path(text: str) -> str:
    """An --output for the figure: it is drawn as PNG, so the name must say so (a .jpg holding
    PNG bytes would mislead whoever opens it)."""
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(
            f"{text!r} does not end in .png: the figure is drawn as PNG only "
            "(convert it afterwards for another format)"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    return quiet_on_broken_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    configure_output(quiet=args.quiet, verbose=args.verbose)
    if args.command == "compare":
        return _compare(args)
    if args.command in ("export", "plot", "report"):
        if args.output is not None and _same_file(args.output, args.path):
            # What it writes would replace the run's record it was asked to read.
            print(
                f"error: -o {args.output} is the chain itself; name another file", file=sys.stderr
            )
            return EXIT_UNREADABLE
        chain = verified(args.path, **reading(args))
        if isinstance(chain, int):
            return chain
        try:  # the chain's own target where it records one: a --target typed is checked
            args.target, _ = chain_target(chain.genesis, args.target)
        except ValueError as error:
            print(f"error: {args.path}: {error}", file=sys.stderr)
            return EXIT_UNREADABLE
        return {"export": _export, "plot": _plot, "report": _report}[args.command](args, chain)
    blocks = _load(args.path)
    if isinstance(blocks, int):
        return blocks
    try:
        verdict = report_chain(
            blocks, say, show_blocks=args.command == "show", note=warn, **reading(args)
        )
    except BrokenPipeError:
        raise  # the reader of our output went away: quiet_on_broken_pipe's to handle
    except (OSError, TrustError) as error:  # the known-servers file
        return _unreadable(error)
    return {
        Verdict.VALID: EXIT_OK,
        Verdict.INCOMPLETE: EXIT_INCOMPLETE,
        Verdict.REFUSED: EXIT_REFUSED,
    }.get(verdict, EXIT_INVALID)


def reading(args: argparse.Namespace) -> dict:
    """What the flags of add_chain_reading_flags ask of a chain, as keyword arguments."""
    return {
        "min_difficulty": args.min_difficulty,
        "server_key": args.server_key,
        "known_servers": args.known_servers,
        "allow_unsigned": args.allow_unsigned,
    }


def verified(path: str, **expected: object) -> Chain | int:
    """The verified chain in PATH, as EXPECTED (reading's keywords) asks, or the exit code
    after saying in one line why not; a note if no server key was pinned."""
    chain = _verify(path, **expected)
    if isinstance(chain, int):
        return chain
    chain, caveat = chain
    if caveat is not None:
        warn(f"note: {caveat}")
    if chain.planned_rounds is not None and not chain.closed:
        print(
            f"warning: {path}: the run is incomplete ({chain.rounds_done} of "
            f"{chain.planned_rounds} rounds)",
            file=sys.stderr,
        )
    return chain


def _verify(
    path: str,
    *,
    min_difficulty: int = 0,
    server_key: str | None = None,
    known_servers: Path | None = None,
    allow_unsigned: bool = False,
) -> tuple[Chain, str | None] | int:
    try:
        loaded = load_chain(path)
        chain = verify_chain(loaded.blocks, min_difficulty=min_difficulty)
        caveat = check_server_key(
            chain,
            server_key=server_key,
            known_servers=known_servers,
            allow_unsigned=allow_unsigned,
        )
    except UntrustedChain as error:
        print(f"error: {path} is refused: {shown(error)}", file=sys.stderr)
        return EXIT_REFUSED
    except (ChainFileError, ChainError) as error:
        print(f"error: {path} does not verify: {shown(error)}", file=sys.stderr)
        return EXIT_INVALID
    except (OSError, TrustError) as error:
        return _unreadable(error, path)
    if loaded.dropped_tail:
        print(f"warning: {path}: {loaded.dropped_tail}", file=sys.stderr)
    return chain, caveat


def _same_file(first: str | Path, second: str | Path) -> bool:
    try:
        return Path(first).resolve() == Path(second).resolve() or os.path.samefile(first, second)
    except OSError:  # one of them does not exist yet: then they are not one file
        return False


def _unreadable(error: OSError | TrustError, path: str | None = None) -> int:
    if isinstance(error, OSError):
        print(f"error: cannot read {error.filename or path}: {error.strerror}", file=sys.stderr)
    else:
        print(f"error: {shown(error)}", file=sys.stderr)
    return EXIT_UNREADABLE


def _compare(args: argparse.Namespace) -> int:
    # Both copies are verified first: a copy altered after it was sealed would otherwise
    # be compared as if its blocks were what their stored hashes claim.
    copies = [_verify(path, **reading(args)) for path in (args.first, args.second)]
    for copy in copies:
        if isinstance(copy, int):
            return copy
    for caveat in dict.fromkeys(caveat for _, caveat in copies if caveat is not None):
        warn(f"note: {caveat}")
    (first, _), (second, _) = copies
    comparison = compare_chains(first.blocks, second.blocks)
    say(comparison.summary)
    if comparison.index is None:
        return EXIT_OK
    return EXIT_EQUIVOCATION if comparison.equivocation else EXIT_DIVERGED


def _export(args: argparse.Namespace, chain: Chain) -> int:
    try:
        model = model_of_round(chain.blocks, args.round, target=args.target)
    except ValueError as error:
        print(f"error: {args.path}: {error}", file=sys.stderr)
        return EXIT_INVALID
    if args.output is None:
        sys.stdout.write(model.to_json())
        return EXIT_OK
    try:
        Path(args.output).write_text(model.to_json(), encoding="utf-8")
    except OSError as error:
        print(f"error: cannot write {args.output}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    say(
        f"wrote {args.output}: the global model of round {model.round} "
        f"(block hash {model.block_hash[:16]}…, genesis {model.genesis_hash[:16]}…)"
    )
    if unit := unit_line(f"predicted_{model.target}", model.unit):
        say(unit)
    return EXIT_OK


def _plot(args: argparse.Namespace, chain: Chain) -> int:
    from fedchain.results.figure import draw_convergence

    if last_round(chain.blocks) == 0:
        print(f"error: {args.path} holds no round yet: nothing to plot", file=sys.stderr)
        return EXIT_INVALID
    data = _figure_data(args, chain.blocks)
    if isinstance(data, int):
        return data
    try:
        draw_convergence(data, args.output)
    except OSError as error:
        print(f"error: cannot write {args.output}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    say(f"wrote {args.output}: {len(data.global_mse)} rounds, {len(data.client_mse)} clients")
    return EXIT_OK


def _report(args: argparse.Namespace, chain: Chain) -> int:
    from fedchain.results.figure import draw_convergence
    from fedchain.results.page import chain_page

    png = None
    if last_round(chain.blocks) > 0:  # a genesis alone still makes a page, with no figure
        data = _figure_data(args, chain.blocks)
        if isinstance(data, int):
            return data
        drawn = io.BytesIO()
        draw_convergence(data, drawn)
        png = drawn.getvalue()
    pinned = args.server_key is not None or args.known_servers is not None
    page = chain_page(chain, figure_png=png, pinned=pinned, source=args.path)
    try:
        Path(args.output).write_text(page, encoding="utf-8")
    except OSError as error:
        print(f"error: cannot write {args.output}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    say(f"wrote {args.output}: {len(chain.blocks)} blocks")
    return EXIT_OK


def _figure_data(args: argparse.Namespace, blocks: Sequence[Block]):
    """The convergence figure's data for --metrics, --test and --target, or the exit code
    after saying why not."""
    # matplotlib takes a while to import: only the commands that draw pay for it.
    from fedchain.results.figure import convergence

    try:
        metrics = None if args.metrics is None else read_metrics(args.metrics, blocks)
        # The held-out rows give round 0's error and each feature's spread even when the
        # metrics hold the test MSE; then the bundled rows are used only if they fit the chain.
        needed = args.test is not None or metrics is None or metrics["test_mse"].isna().any()
        try:
            test = _rows_of(args.test or settings.bundled_data("test.csv"), args, blocks)
        except DataError:
            if needed:
                raise
            test = None
        pooled = (
            None if args.pooled is None else pool(_rows_of(p, args, blocks) for p in args.pooled)
        )
        return convergence(blocks, test=test, metrics=metrics, pooled=pooled, target=args.target)
    except (DataError, MetricsError) as error:
        print(f"error: {shown(error)}", file=sys.stderr)
        return EXIT_UNREADABLE


def _rows_of(path: Path, args: argparse.Namespace, blocks: Sequence[Block]) -> Dataset:
    rows = load_dataset(path, target=args.target)
    if difference := column_difference(blocks[0].feature_names, rows.feature_names):
        raise DataError(f"{path}: the columns differ from the chain's: {difference}")
    return rows.in_order(blocks[0].feature_names)


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
