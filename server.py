"""The federated server: `python server.py` in the first terminal. `--help` lists the flags."""

import argparse
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from blockchain import report_chain
from chain_store import ChainFileError, load_chain
from cli_types import integer_in, port, seconds
from dataset import DEFAULT_TARGET, DataError, load_dataset
from federated_server import (
    DEFAULT_JOIN_TIMEOUT_S,
    DEFAULT_REGISTER_TIMEOUT_S,
    DEFAULT_ROUND_TIMEOUT_S,
    DEFAULT_ROUNDS,
    DEFAULT_RUN_SEED,
    SEND_TIMEOUT_S,
    ChainUnavailable,
    RunAborted,
    run_federation,
)
from protocol import DEFAULT_HOST, DEFAULT_MAX_FRAME_BYTES, DEFAULT_PORT

HERE = Path(__file__).resolve().parent
DEFAULT_CLIENTS = 2
DEFAULT_DIFFICULTY_BITS = 18  # about a quarter of a second of mining a block here
DEFAULT_CHAIN = Path("chain.jsonl")
DEFAULT_TEST = HERE / "data" / "test.csv"
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="The federated server: averages the clients' models, round by round, "
        "and records every round on a proof-of-work chain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    flag = parser.add_argument
    flag("--host", default=DEFAULT_HOST, help="address to listen on")
    flag("--port", type=port, default=DEFAULT_PORT, help="0 picks a free port")
    flag("--clients", type=integer_in(1), default=DEFAULT_CLIENTS, help="clients per run")
    flag("--rounds", type=integer_in(1), default=DEFAULT_ROUNDS, help="training rounds")
    flag("--difficulty", type=integer_in(0, 64), default=DEFAULT_DIFFICULTY_BITS,
         help="proof of work, in leading zero bits")  # fmt: skip
    flag("--chain", type=Path, default=DEFAULT_CHAIN, help="the chain file; must not exist")
    flag("--test", default=str(DEFAULT_TEST), help="held-out CSV to score rounds on ('' for none)")
    flag("--target", default=DEFAULT_TARGET, help="target column of the --test file")
    flag("--seed", type=integer_in(0), default=DEFAULT_RUN_SEED, help="the run's seed")
    flag("--round-timeout-s", type=seconds, default=DEFAULT_ROUND_TIMEOUT_S,
         help="how long to wait for every client's update in a round")  # fmt: skip
    flag("--join-timeout-s", type=seconds, default=DEFAULT_JOIN_TIMEOUT_S,
         help="how long to wait for the clients to join")  # fmt: skip
    flag("--register-timeout-s", type=seconds, default=DEFAULT_REGISTER_TIMEOUT_S,
         help="how long a new connection may take to register")  # fmt: skip
    flag("--max-frame-bytes", type=integer_in(1024, 2**32 - 1), default=DEFAULT_MAX_FRAME_BYTES,
         help="refuse any message longer than this")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        test_data = load_dataset(args.test, target=args.target) if args.test else None
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    # Checked now, to fail before any client joins; the file itself is made at genesis.
    if args.chain.exists():
        print(f"error: {args.chain} already exists; move it away or choose another --chain",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    try:
        args.chain.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: cannot make a folder for {args.chain}: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        listener = socket.create_server((args.host, args.port), backlog=16)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return EXIT_USAGE
    listener.settimeout(SEND_TIMEOUT_S)  # accept() is only called once one is waiting
    with listener:
        host, port_number = listener.getsockname()[:2]
        say(f"listening on {host}:{port_number}")  # first line: tests and demo.py read the port
        try:
            run_federation(
                listener,
                chain_path=args.chain,
                test_data=test_data,
                say=say,
                n_clients=args.clients,
                rounds=args.rounds,
                difficulty_bits=args.difficulty,
                seed=args.seed,
                round_timeout_s=args.round_timeout_s,
                join_timeout_s=args.join_timeout_s,
                register_timeout_s=args.register_timeout_s,
                max_frame_bytes=args.max_frame_bytes,
            )
        except ChainUnavailable as error:
            say(f"run stopped: {error}")
            return EXIT_RUN_FAILED
        except RunAborted as error:
            say(f"run stopped: {error}")
            show_stored_chain(args.chain, say)
            return EXIT_RUN_FAILED
        except KeyboardInterrupt:
            say("interrupted; the chain file holds every block finished so far")
            return EXIT_RUN_FAILED
    say("run complete")
    return EXIT_OK if show_stored_chain(args.chain, say) else EXIT_RUN_FAILED


def show_stored_chain(path: Path, say: Callable[[str], None]) -> bool:
    """Print the chain as it is on disk, and whether it verifies."""
    try:
        loaded = load_chain(path)
    except FileNotFoundError:
        say("no block was written")
        return False
    except ChainFileError as error:
        say(f"invalid: {error}")
        return False
    except OSError as error:
        say(f"cannot read {path}: {error}")
        return False
    say(f"the chain, from {path}:")
    if loaded.dropped_tail:
        say(f"warning: {loaded.dropped_tail}")
    return report_chain(loaded.blocks, say)


if __name__ == "__main__":
    raise SystemExit(main())
