"""A federated client's command line: `python client.py --name NAME --data CSV`, or
`fedchain-client`; client1.py and client2.py are this with their own name and data file."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedchain import settings
from fedchain.cli.arguments import add_connection_flags, client_name, integer_in, seconds
from fedchain.cli.console import say
from fedchain.federation.client import ClientFailed, FederatedClient, connect, prepare_replica
from fedchain.learning.dataset import DataError, load_dataset
from fedchain.wire.frames import ConnectionClosed
from fedchain.wire.messages import ProtocolError, validate_message

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(
    argv: Sequence[str] | None, *, default_name: str, default_data: str
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A federated client: trains on its own rows, sends only its model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_connection_flags(parser, listening=False)
    flag = parser.add_argument
    flag("--name", type=client_name, default=default_name or None, required=not default_name,
         help="this client's name")  # fmt: skip
    flag("--data", default=default_data or None, required=not default_data,
         help="this client's CSV rows")  # fmt: skip
    flag("--target", default=settings.TARGET, help="the column to predict")
    flag("--seed", type=integer_in(0), default=None,
         help="the local search's seed (%(default)s: the run's, sent by the server)")  # fmt: skip
    flag("--generations", type=integer_in(1), default=settings.GENERATIONS,
         help="GA generations per round")  # fmt: skip
    flag("--population", type=integer_in(4), default=settings.POPULATION,
         help="GA population size")  # fmt: skip
    flag("--replica", type=Path, default=None,
         help="its copy of the chain (default: replicas/NAME-GENESISHASH.jsonl)")  # fmt: skip
    flag("--connect-timeout-s", type=seconds, default=settings.CONNECT_TIMEOUT_S,
         help="keep retrying the connection this long")  # fmt: skip
    flag("--timeout-s", type=seconds, default=settings.CLIENT_TIMEOUT_S,
         help="the longest wait for the server's next message")  # fmt: skip
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None, *, default_name: str = "", default_data: str = ""
) -> int:
    """Run one client; DEFAULT_NAME and DEFAULT_DATA are what client1.py and client2.py set."""
    args = parse_args(argv, default_name=default_name, default_data=default_data)
    name = args.name  # every error says which client, for a terminal that shows several
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
        )
        # Whatever would fail after joining, and so end the run for everyone, is checked first.
        validate_message(client.registration())
        prepare_replica(args.replica)
    except (DataError, ValueError, OSError) as error:  # ValueError: values too large to use
        print(f"error: {name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = connect(
            args.host, args.port, within_s=args.connect_timeout_s, timeout_s=args.timeout_s
        )
        with sock:
            say(f"{name}: connected to {args.host}:{args.port} with {data.n_samples} rows")
            client.run(sock, args.max_frame_bytes)
    except ClientFailed as error:
        print(f"error: {name}: {error}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except ProtocolError as error:
        print(f"error: {name}: the server broke the protocol: {error}", file=sys.stderr)
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
