"""A federated client's command line: `python client.py --name NAME --data CSV`, or
`fedchain-client`; client1.py and client2.py are this with their own name and data file."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedchain import settings
from fedchain.cli.arguments import (
    add_connection_flags,
    add_output_flags,
    client_name,
    column_name,
    delta,
    epsilon,
    integer_in,
    parser_for,
    public_key,
    seconds,
)
from fedchain.cli.console import configure_output, detail, new_key_note, say, shown, warn
from fedchain.federation.client import (
    ClientFailed,
    FederatedClient,
    PrivacyWish,
    prepare_replica,
    take_part,
)
from fedchain.learning.dataset import DataError, load_dataset
from fedchain.learning.poisoning import parse_poison
from fedchain.learning.privacy import DEFAULT_DELTA
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import load_or_create_key, public_hex
from fedchain.trust.known_servers import KnownServers
from fedchain.wire.frames import ConnectionClosed
from fedchain.wire.messages import ProtocolError, validate_message

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def poison(text: str):
    """A --poison flag: scale=S or noise=S."""
    try:
        return parse_poison(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(
    argv: Sequence[str] | None, *, default_name: str, default_data: str
) -> argparse.Namespace:
    parser = parser_for(
        description="A federated client: trains on its own rows, sends only its model.",
    )
    add_connection_flags(parser, listening=False)
    flag = parser.add_argument
    flag(
        "--name",
        type=client_name,
        default=default_name or None,
        required=not default_name,
        help="this client's name",
    )
    flag(
        "--data",
        default=default_data or None,
        help="this client's CSV rows" + ("" if default_data else "; needed unless --show-key"),
    )
    flag(
        "--target",
        type=column_name,
        default=settings.TARGET,
        help="the column to predict; said to the server, which refuses it for a run that "
        "predicts another, as this client refuses such a run's genesis",
    )
    flag(
        "--seed",
        type=integer_in(0),
        default=None,
        help="the local search's seed (default: the run's, sent by the server)",
    )
    flag(
        "--generations",
        type=integer_in(1),
        default=settings.GENERATIONS,
        help="most GA generations a round, per block of up to 64 genes "
        "(the search stops sooner once converged)",
    )
    flag("--population", type=integer_in(4), default=settings.POPULATION, help="GA population size")
    flag(
        "--replica",
        type=Path,
        default=None,
        help="its copy of the chain (default: replicas/NAME-GENESISHASH.jsonl); a client "
        "restarted with one of the same run goes on with it",
    )
    flag(
        "--connect-timeout-s",
        type=seconds,
        default=settings.CONNECT_TIMEOUT_S,
        help="keep retrying the connection this long",
    )
    flag(
        "--timeout-s",
        type=seconds,
        default=settings.CLIENT_TIMEOUT_S,
        help="the longest wait for the server's next message",
    )
    flag(
        "--reconnect-timeout-s",
        type=seconds,
        default=settings.RECONNECT_TIMEOUT_S,
        help="when the server vanishes mid-run, keep trying to reach it again this long, "
        "then catch up on what was missed",
    )
    flag(
        "--key",
        type=Path,
        default=None,
        help="this client's Ed25519 key (default: keys/NAME.key); made on first run",
    )
    flag("--show-key", action="store_true", help="print the public key as 64 hex digits, exit")
    flag(
        "--server-key",
        type=public_key,
        default=None,
        help="the server's public key (64 hex digits); default: trust on first use",
    )
    flag(
        "--known-servers",
        type=Path,
        default=settings.KNOWN_SERVERS_PATH,
        help="server keys trusted on first use, as SSH's known_hosts",
    )
    flag(
        "--min-difficulty",
        type=integer_in(0, 64),
        default=settings.MIN_DIFFICULTY_BITS,
        help="refuse a run whose chain is mined at fewer bits",
    )
    flag(
        "--max-rounds",
        type=integer_in(1),
        default=settings.MAX_ROUNDS,
        help="refuse a run whose genesis plans more rounds",
    )
    flag(
        "--dp-epsilon",
        type=epsilon,
        default=None,
        help="train only on this client's sums, released once with (ε, δ)-differential "
        "privacy for each of its rows; needs a run with a schema (server --schema)",
    )
    flag("--dp-delta", type=delta, default=DEFAULT_DELTA, help="the δ of --dp-epsilon's guarantee")
    flag(
        "--poison",
        type=poison,
        default=None,
        help="for demonstrating the robust rules only: make this client an attacker that "
        "sends scale=S (the received model plus S x its honest change) or noise=S",
    )
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if not args.data and not args.show_key:
        parser.error("the following arguments are required: --data")
    return args


def main(
    argv: Sequence[str] | None = None, *, default_name: str = "", default_data: str = ""
) -> int:
    """Run one client; DEFAULT_NAME and DEFAULT_DATA are what client1.py and client2.py set."""
    args = parse_args(argv, default_name=default_name, default_data=default_data)
    configure_output(quiet=args.quiet, verbose=args.verbose)
    name = args.name  # every error says which client, for a terminal that shows several
    key_path = args.key or settings.KEY_DIR / f"{name}.key"
    try:
        key, created = load_or_create_key(key_path)
    except (TrustError, OSError) as error:
        print(f"error: {name}: {shown(error)}", file=sys.stderr)
        return EXIT_USAGE
    if args.show_key:
        if created:
            warn(new_key_note(key_path))
        print(public_hex(key))  # alone on standard output, for scripts to take, even with -q
        return EXIT_OK
    if created:
        say(f"{name}: made a new key {public_hex(key)} in {key_path}")
    try:
        data = load_dataset(args.data, target=args.target)
        client = FederatedClient(
            name=name,
            data=data,
            seed=args.seed,
            generations=args.generations,
            population=args.population,
            replica=args.replica,
            say=say,
            key=key,
            min_difficulty=args.min_difficulty,
            max_rounds=args.max_rounds,
            target=args.target,
        )
        client.detail = detail
        client.poison = args.poison
        # Whatever would fail after joining, and so end the run for everyone, is checked first.
        validate_message(client.registration())
        if args.dp_epsilon is not None:  # the release waits for the server's schema
            client.privacy = PrivacyWish(
                args.dp_epsilon, args.dp_delta, args.target, key_path.parent
            )
        prepare_replica(args.replica)
        known_servers = KnownServers(args.known_servers)
        if args.server_key is None:  # the file is not read with a pinned key
            known_servers.check_file()
    except (DataError, ValueError, OSError) as error:  # ValueError: too large to use, or TrustError
        print(f"error: {name}: {shown(error)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        take_part(
            client,
            args.host,
            args.port,
            within_s=args.connect_timeout_s,
            timeout_s=args.timeout_s,
            server_key=args.server_key,
            known_servers=known_servers,
            max_frame_bytes=args.max_frame_bytes,
            reconnect_s=args.reconnect_timeout_s,
        )
    except ClientFailed as error:
        print(f"error: {name}: {shown(error)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except ProtocolError as error:
        print(f"error: {name}: the server broke the protocol: {shown(error)}", file=sys.stderr)
        return EXIT_FAILED
    except ConnectionClosed:
        print(f"error: {name}: the server closed the connection mid-run", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError:
        print(
            f"error: {name}: no word from the server within {args.timeout_s:g} s (--timeout-s)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as error:
        print(f"error: {name}: connection to the server failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
