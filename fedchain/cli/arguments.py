"""Argument types and flags the command lines share, so a bad flag is refused with a usage
message and every program spells the common flags the same way."""

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from fedchain import settings
from fedchain.checks import MAX_INT, check_int, check_name
from fedchain.cli.console import command_for
from fedchain.learning.aggregation import MAX_PROXIMAL, MIN_PROXIMAL
from fedchain.learning.privacy import MAX_DELTA, MAX_EPSILON, MIN_EPSILON
from fedchain.ledger.block import MAX_DIFFICULTY_BITS, check_unit
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import check_public_hex
from fedchain.wire.frames import MAX_FRAME_LIMIT


class HelpFormatter(argparse.HelpFormatter):
    """--help with an option's default where it tells something: not for a switch, nor a default
    of None (nothing set), nor where the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and action.nargs != 0  # a switch: on when given, nothing more to say
            and action.default not in (None, "", argparse.SUPPRESS)
            and "default" not in text.lower()
        ):
            text += " (default: %(default)s)"
        return text


def parser_for(**settings: object) -> argparse.ArgumentParser:
    """An argument parser with this project's help formatting."""
    return argparse.ArgumentParser(formatter_class=HelpFormatter, **settings)


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: let the system pick a free one)."""
    return integer_in(0, 65535)(text)


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def proximal_weight(text: str) -> float:
    """A proximal weight in the range the chain accepts."""
    return _number_in(text, MIN_PROXIMAL, MAX_PROXIMAL)


def epsilon(text: str) -> float:
    """A differential-privacy ε in the range the mechanism takes."""
    return _number_in(text, MIN_EPSILON, MAX_EPSILON)


def delta(text: str) -> float:
    """A differential-privacy δ in the range the mechanism takes."""
    value = _number_in(text, 0.0, MAX_DELTA)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _number_in(text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number in [{low:g}, {high:g}]")
    return value


def integer_in(low: int, high: int = MAX_INT):
    """An argument type for an integer in LOW..HIGH."""

    def parse(text: str) -> int:
        try:
            return check_int(int(text), low, high, "it")
        except ValueError as error:
            whole = text.strip().lstrip("+-").isdigit()
            reason = str(error).removeprefix("it ") if whole else f"{text!r} is not a whole number"
            raise argparse.ArgumentTypeError(reason) from None

    return parse


def client_name(text: str) -> str:
    """A client's name, held to the same rule as on the wire and the chain."""
    try:
        return check_name(text, "a client's name")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def column_name(text: str) -> str:
    """A data column's name (the target's), held to the same rule as a feature's."""
    try:
        return check_name(text, "a column's name")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def target_unit(text: str) -> str:
    """A target's unit as the chain records it; '' for none stated."""
    try:
        return check_unit(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def public_key(text: str) -> str:
    """A public key flag: 64 hex digits."""
    try:
        return check_public_hex(text, "--server-key")
    except (TrustError, TypeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags ARGV gives, whatever their values: a flag set to its
    default is still the user's word. PARSER must have accepted ARGV already."""
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in defaults:
            action.default = argparse.SUPPRESS  # so only what ARGV sets reaches the namespace
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults.items():
            action.default = default


def add_run_length_flags(parser: argparse.ArgumentParser) -> None:
    """--rounds and --difficulty, for every program that starts a run (server.py, and the
    Flower simulation)."""
    parser.add_argument(
        "--rounds", type=integer_in(1), default=settings.ROUNDS, help="training rounds"
    )
    parser.add_argument(
        "--difficulty",
        type=integer_in(0, MAX_DIFFICULTY_BITS),
        default=settings.DIFFICULTY_BITS,
        help="proof of work, in leading zero bits",
    )


def add_chain_reading_flags(
    parser: argparse.ArgumentParser, *, require_signed: bool = False
) -> None:
    """What a reader expects of a chain before using it: --min-difficulty, the server's key
    (--server-key or --known-servers), --allow-unsigned; and, where it was once needed,
    --require-signed, now the default."""
    parser.add_argument(
        "--min-difficulty",
        type=integer_in(0, MAX_DIFFICULTY_BITS),
        default=0,
        help="refuse a chain mined at fewer bits than this (a forger can re-mine at 0)",
    )
    pinned = parser.add_mutually_exclusive_group()
    pinned.add_argument(
        "--server-key",
        type=public_key,
        default=None,
        metavar="HEX",
        help="refuse a chain not signed by this server key, 64 hex digits "
        f"(`{command_for('server')} --show-key` prints it); without it, anyone's key is accepted, "
        "and a note says so",
    )
    pinned.add_argument(
        "--known-servers",
        type=Path,
        default=None,
        metavar="FILE",
        help="refuse a chain not signed by a key this file records, for any server address "
        "(a client's keys/known_servers: HOST:PORT HEX a line)",
    )
    unsigned = parser.add_mutually_exclusive_group()
    unsigned.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="read an unsigned (format-1) chain, which anyone can make, instead of refusing it",
    )
    if require_signed:
        unsigned.add_argument(
            "--require-signed",
            action="store_true",
            help="the default now: an unsigned chain is refused unless --allow-unsigned "
            "(accepted so that older scripts still run)",
        )


def add_connection_flags(parser: argparse.ArgumentParser, *, listening: bool) -> None:
    """--host, --port and --max-frame-bytes, worded for the server (LISTENING) or a client."""
    parser.add_argument(
        "--host",
        default=settings.HOST,
        help="address to listen on" if listening else "the server's address",
    )
    parser.add_argument(
        "--port",
        type=port,
        default=settings.PORT,
        help="0 picks a free port" if listening else "the server's port",
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=integer_in(1024, MAX_FRAME_LIMIT),
        default=settings.MAX_FRAME_BYTES,
        help="refuse any message longer than this",
    )


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """-q and -v, as every program has them."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="print every detail too")
