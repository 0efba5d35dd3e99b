"""The federated server's command line: `python server.py` or `fedchain-server`."""

import argparse
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fedchain import settings
from fedchain.cli.arguments import add_connection_flags, integer_in, seconds
from fedchain.cli.console import listening_line, say, shown
from fedchain.federation.server import ChainUnavailable, FederationServer, RunAborted
from fedchain.learning.dataset import DataError, load_dataset
from fedchain.ledger.block import MAX_DIFFICULTY_BITS
from fedchain.ledger.report import report_chain
from fedchain.ledger.store import ChainFileError, load_chain
from fedchain.trust.authorized import load_authorized_keys
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import load_or_create_key, public_hex

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The federated server: averages the clients' models, round by round, "
        "and records every round on a proof-of-work chain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_connection_flags(parser, listening=True)
    flag = parser.add_argument
    flag("--clients", type=integer_in(1), default=settings.CLIENTS, help="clients per run")
    flag("--min-clients", type=integer_in(1), default=None,
         help="the fewest clients a round may go on with; one that drops out, times out or "
         "sends a bad update is left out (default: all of --clients)")  # fmt: skip
    flag("--rounds", type=integer_in(1), default=settings.ROUNDS, help="training rounds")
    flag("--difficulty", type=integer_in(0, MAX_DIFFICULTY_BITS), default=settings.DIFFICULTY_BITS,
         help="proof of work, in leading zero bits")  # fmt: skip
    flag("--chain", type=Path, default=settings.CHAIN_PATH, help="the chain file; must not exist")
    flag("--test", default=str(settings.bundled_data("test.csv")),
         help="held-out CSV to score rounds on ('' for none); fixes the run's columns")  # fmt: skip
    flag("--target", default=settings.TARGET, help="target column of the --test file")
    flag("--seed", type=integer_in(0), default=settings.RUN_SEED, help="the run's seed")
    flag("--round-timeout-s", type=seconds, default=settings.ROUND_TIMEOUT_S,
         help="how long to wait for every client's update in a round")  # fmt: skip
    flag("--join-timeout-s", type=seconds, default=settings.JOIN_TIMEOUT_S,
         help="how long to wait for the clients to join")  # fmt: skip
    flag("--register-timeout-s", type=seconds, default=settings.REGISTER_TIMEOUT_S,
         help="how long a new connection may take to register")  # fmt: skip
    flag("--key", type=Path, default=settings.SERVER_KEY_PATH,
         help="the server's Ed25519 key; made on first run, private to its owner")  # fmt: skip
    flag("--show-key", action="store_true", help="print the public key as 64 hex digits, exit")
    flag("--authorized-keys", type=Path, default=None,
         help="who may join: one 'NAME HEX' a line (default: open enrolment)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.min_clients is not None and args.min_clients > args.clients:
        print(f"error: --min-clients {args.min_clients} is more than --clients {args.clients}",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    try:
        key, created = load_or_create_key(args.key)
        authorized = load_authorized_keys(args.authorized_keys) if args.authorized_keys else None
    except (TrustError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.show_key:
        say(public_hex(key))
        return EXIT_OK
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
    listener.settimeout(settings.SEND_TIMEOUT_S)  # accept() is only called once one is waiting
    with listener:
        host, port_number = listener.getsockname()[:2]
        say(listening_line(host, port_number))  # first: tests and demo.py read the port from it
        made = "made now in" if created else "from"
        say(f"server key {public_hex(key)} ({made} {args.key})")
        server = FederationServer(listener, args.chain, say, key=key)
        server.authorized_keys = authorized
        server.n_clients = args.clients
        server.min_clients = args.min_clients
        server.rounds = args.rounds
        server.difficulty_bits = args.difficulty
        server.seed = args.seed
        server.round_timeout_s = args.round_timeout_s
        server.join_timeout_s = args.join_timeout_s
        server.register_timeout_s = args.register_timeout_s
        server.max_frame_bytes = args.max_frame_bytes
        server.test_data = test_data
        try:
            server.run()
        except ChainUnavailable as error:
            say(f"run stopped: {error}")
            return EXIT_RUN_FAILED
        except RunAborted as error:
            say(f"run stopped: {error}")
            show_stored_chain(args.chain, say)
            return EXIT_RUN_FAILED
        except KeyboardInterrupt:
            kept = "every block finished so far" if args.chain.exists() else "no block yet"
            say(f"interrupted; {args.chain} holds {kept}")
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
        say(f"invalid: {shown(error)}")
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
