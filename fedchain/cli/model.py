"""`python model.py CHAIN [--round N]`: the global model a verified chain holds, for a person;
`python model.py predict|score --model FILE|--chain CHAIN --data CSV`: that model put to use.
Installed, `fedchain-model`."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedchain import settings
from fedchain.cli.arguments import (
    add_chain_reading_flags,
    add_output_flags,
    integer_in,
    parser_for,
)
from fedchain.cli.chain import reading, verified
from fedchain.cli.console import (
    command_for,
    configure_output,
    quiet_on_broken_pipe,
    say,
    shown,
    warn,
)
from fedchain.learning.dataset import DataError, Dataset, check_squarable, load_rows
from fedchain.results import read_model_file
from fedchain.results.chain_model import ChainModel, ModelFileError
from fedchain.results.history import model_of_round
from fedchain.results.target import unit_line

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2
# and, as blockchain.py, 6 for a chain refused: unsigned, or not signed by the pinned key
COMMANDS = ("predict", "score")


def main(argv: Sequence[str] | None = None) -> int:
    return quiet_on_broken_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first form, `model.py CHAIN`, stays as it was: a command word comes first or not at all.
    if argv and argv[0] in COMMANDS:
        return _use(argv[0], argv[1:])
    return _show(argv)


def _show(argv: list[str]) -> int:
    me = command_for("model")
    parser = parser_for(
        description="Print the global model of a chain's round (default: the last), "
        "after verifying the chain.",
        epilog=f"Also: `{me} predict ...` writes a model's predictions for a CSV's rows, "
        f"`{me} score ...` prints its MSE and R² on them (see `{me} predict --help`).",
    )
    parser.add_argument("chain", help="a chain file (JSON Lines)")
    parser.add_argument("--round", type=integer_in(0), default=None, help="which round's model")
    add_chain_reading_flags(parser)
    add_output_flags(parser)
    args = parser.parse_args(argv)
    configure_output(quiet=args.quiet, verbose=args.verbose)
    model = _from_chain(args.chain, args.round, None, args)
    if isinstance(model, int):
        return model
    say(f"global model of round {model.round} (block hash {model.block_hash[:16]}…), y = X·w + b:")
    width = max(len(name) for name in model.feature_names)
    for name, weight in zip(model.feature_names, model.coef_, strict=True):
        say(f"  {name:<{width}}  {weight:+.6g}")
    say(f"  {'(bias)':<{width}}  {model.intercept_:+.6g}")
    if model.unit is not None:  # what y is, where the chain records it
        say(f"y is the predicted {model.target}; {unit_line('y', model.unit)}")
    return EXIT_OK


def _use(command: str, argv: list[str]) -> int:
    what = {
        "predict": "Write a model's predictions for the rows of a CSV file.",
        "score": "Print a model's MSE and R² on the rows of a CSV file that holds the target.",
    }
    parser = parser_for(prog=f"{Path(sys.argv[0]).name} {command}", description=what[command])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=f"a model file written by `{command_for('chain')} export`")
    source.add_argument("--chain", help="a chain file: its global model, after verifying it")
    parser.add_argument("--round", type=integer_in(0), default=None, help="with --chain")
    parser.add_argument(
        "--data", required=True, help="the rows: a CSV with the model's columns, by name"
    )
    parser.add_argument(
        "--target",
        default=None,
        help="the target column (default: the model file's, or with --chain the chain's; "
        f"for a chain older than format 10, which records none, {settings.TARGET})",
    )
    if command == "predict":
        parser.add_argument("-o", "--output", help="the CSV to write (default: print it)")
    add_chain_reading_flags(parser)
    add_output_flags(parser)
    args = parser.parse_args(argv)
    configure_output(quiet=args.quiet, verbose=args.verbose)
    if args.model is not None:
        if args.round is not None:
            parser.error("--round picks a round of a --chain; a model file holds one round")
        if args.server_key or args.known_servers or args.allow_unsigned or args.min_difficulty:
            parser.error(
                "--server-key, --known-servers, --allow-unsigned and --min-difficulty "
                "check a --chain; a model file is taken as it is"
            )
        try:
            model = read_model_file(args.model)
        except ModelFileError as error:
            print(f"error: {args.model}: {shown(error)}", file=sys.stderr)
            return EXIT_INVALID
        except OSError as error:
            print(f"error: cannot read {args.model}: {error.strerror}", file=sys.stderr)
            return EXIT_UNREADABLE
        if args.target is not None and args.target != model.target:
            if model.unit is not None:  # the chain recorded it: not the reader's to rename
                print(
                    f"error: {args.model}: the model predicts {model.target!r}, as its chain "
                    f"records; --target is {args.target!r}",
                    file=sys.stderr,
                )
                return EXIT_UNREADABLE
            model.target = args.target
    else:
        model = _from_chain(args.chain, args.round, args.target, args)
        if isinstance(model, int):
            return model
    try:
        X, y = load_rows(args.data, feature_names=model.feature_names, target=model.target)
        # The rows a client would refuse to train on, named by file, line and column.
        rows = Dataset(tuple(model.feature_names), X, np.zeros(len(X)) if y is None else y)
        check_squarable(rows, args.data, target=model.target, about_mean=False)
    except DataError as error:
        print(f"error: {shown(error)}", file=sys.stderr)
        return EXIT_UNREADABLE
    if command == "predict":
        return _predict(model, X, args.output)
    if y is None:
        print(
            f"error: {args.data}: no target column {model.target!r} to score against",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    with np.errstate(over="ignore", invalid="ignore"):
        residual = model.predict(X) - y
        mse = float(residual @ residual) / len(y)
    if not np.isfinite(mse):
        print(
            f"error: {args.data}: round {model.round}'s model is too large to score on these "
            "rows: its errors' squares overflow float64",
            file=sys.stderr,
        )
        return EXIT_INVALID
    say(f"{len(y)} rows of {args.data}, target {model.target!r}, round {model.round}'s model")
    say(f"MSE {mse:.6g}")
    variance = float(np.var(y))
    r2 = f"{1.0 - mse / variance:.6g}" if variance > 0 else "undefined (the target is constant)"
    say(f"R²  {r2}")
    return EXIT_OK


def _predict(model: ChainModel, X: np.ndarray, output: str | None) -> int:
    # 17 significant digits read back as the same bits: the predictions are the model's exactly.
    column = f"predicted_{model.target}"
    lines = [column] + [f"{value:.17g}" for value in model.predict(X)]
    text = "\n".join(lines) + "\n"
    unit = unit_line(column, model.unit)
    if output is None:
        sys.stdout.write(text)
        if unit is not None:  # beside the CSV, not in it: the output stays one column
            warn(f"note: {unit}")
        return EXIT_OK
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as error:
        print(f"error: cannot write {output}: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    say(f"wrote {output}: {len(X)} predictions of {model.target!r} by round {model.round}'s model")
    if unit is not None:
        say(unit)
    return EXIT_OK


def _from_chain(
    path: str, round: int | None, target: str | None, args: argparse.Namespace
) -> ChainModel | int:
    chain = verified(path, **reading(args))
    if isinstance(chain, int):
        return chain
    try:
        return model_of_round(chain.blocks, round, target=target)
    except ValueError as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    raise SystemExit(main())
