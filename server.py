"""The federated server: `python server.py` in the first terminal. `--help` lists the flags."""

import argparse
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from blockchain import report_chain
from chain_store import ChainFileError, load_chain
from cli_types import at_least, port, seconds
from dataset import DataError, load_dataset
from federated_server import SEND_TIMEOUT_S, RunAborted, RunSettings, run_federation
from protocol import DEFAULT_HOST, DEFAULT_MAX_FRAME_BYTES, DEFAULT_PORT
from simulation import DEFAULT_ROUNDS, DEFAULT_RUN_SEED

HERE = Path(__file__).resolve().parent
DEFAULT_CLIENTS = 2
DEFAULT_DIFFICULTY_BITS = 18  # about a quarter of a second of mining a block here
DEFAULT_CHAIN = "chain.jsonl"
DEFAULT_TEST = HERE / "data" / "test.csv"
DEFAULT_ROUND_TIMEOUT_S = 60.0
DEFAULT_JOIN_TIMEOUT_S = 120.0
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="The federated server: averages the clients' models, round by round, "
        "and records every round on a proof-of-work chain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=port, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--clients", type=at_least(1), default=DEFAULT_CLIENTS, help="clients per run"
    )
    parser.add_argument(
        "--rounds", type=at_least(1), default=DEFAULT_ROUNDS, help="training rounds"
    )
    parser.add_argument(
        "--difficulty",
        type=at_least(0, 64),
        default=DEFAULT_DIFFICULTY_BITS,
        help="proof of work, in bits",
    )
    parser.add_argument("--chain", type=Path, default=Path(DEFAULT_CHAIN), help="new chain file")
    parser.add_argument(
        "--test",
        default=str(DEFAULT_TEST),
        help="held-out CSV to score each round on ('' for none)",
    )
    parser.add_argument("--target", default="charges", help="target column of the --test file")
    parser.add_argument("--seed", type=at_least(0), default=DEFAULT_RUN_SEED, help="the run's seed")
    parser.add_argument(
        "--round-timeout-s", type=seconds, default=DEFAULT_ROUND_TIMEOUT_S,
        help="how long to wait for every client's update in a round",
    )  # fmt: skip
    parser.add_argument(
        "--join-timeout-s", type=seconds, default=DEFAULT_JOIN_TIMEOUT_S,
        help="how long to wait for the clients to join",
    )  # fmt: skip
    parser.add_argument(
        "--max-frame-bytes", type=at_least(1024, 2**32 - 1), default=DEFAULT_MAX_FRAME_BYTES,
        help="refuse any message longer than this",
    )  # fmt: skip
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
    if args.chain.exists():  # checked now to fail fast; the file is made only at genesis
        print(f"error: {args.chain} already exists; move it away or choose another --chain",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    settings = RunSettings(
        n_clients=args.clients,
        rounds=args.rounds,
        difficulty=args.difficulty,
        seed=args.seed,
        round_timeout_s=args.round_timeout_s,
        join_timeout_s=args.join_timeout_s,
        max_frame_bytes=args.max_frame_bytes,
    )
    try:
        listener = socket.create_server((args.host, args.port), backlog=16)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return EXIT_USAGE
    listener.settimeout(SEND_TIMEOUT_S)  # accept() is only called once one is waiting
    with listener:
        host, port = listener.getsockname()[:2]
        say(f"listening on {host}:{port}")  # first line: tests and demo.py read the port
        try:
            run_federation(listener, settings, args.chain, test_data, say)
        except RunAborted as error:
            say(f"run stopped: {error}")
            show_stored_chain(args.chain, say)
            return EXIT_RUN_FAILED
        except FileExistsError as error:  # made by someone else since the check above
            say(f"run stopped: {error}")
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
    say(f"the chain, from {path}:")
    if loaded.dropped_tail:
        say(f"warning: {loaded.dropped_tail}")
    return report_chain(loaded.blocks, say)


if __name__ == "__main__":
    raise SystemExit(main())
