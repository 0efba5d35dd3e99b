"""A federated client: `python client.py --name NAME --data CSV` for any client;
client1.py and client2.py are this with their own name and data. `--help` lists the flags."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cli_types import integer_in, port, seconds
from dataset import DEFAULT_TARGET, DataError, load_dataset
from federated_client import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    ClientFailed,
    FederatedClient,
    connect,
    prepare_replica,
)
from local_training import DEFAULT_GENERATIONS, DEFAULT_POPULATION
from protocol import (
    DEFAULT_HOST,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_PORT,
    ConnectionClosed,
    ProtocolError,
    validate_message,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(
    argv: Sequence[str] | None = None, *, default_name: str = "", default_data: str = ""
) -> int:
    """Run one client; DEFAULT_NAME and DEFAULT_DATA are what client1.py and client2.py set."""
    parser = argparse.ArgumentParser(
        description="A federated client: trains on its own rows, sends only its model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="the server's address")
    parser.add_argument("--port", type=port, default=DEFAULT_PORT, help="the server's port")
    parser.add_argument(
        "--name", default=default_name, required=not default_name, help="this client's name"
    )
    parser.add_argument(
        "--data", default=default_data, required=not default_data, help="this client's CSV rows"
    )
    parser.add_argument("--target", default=DEFAULT_TARGET, help="the column to predict")
    parser.add_argument(
        "--seed", type=integer_in(0), default=None,
        help="the local search's seed (%(default)s: the run's, sent by the server)",
    )  # fmt: skip
    parser.add_argument(
        "--generations",
        type=integer_in(1),
        default=DEFAULT_GENERATIONS,
        help="GA generations per round",
    )
    parser.add_argument(
        "--population", type=integer_in(4), default=DEFAULT_POPULATION, help="GA population size"
    )
    parser.add_argument(
        "--replica", type=Path, default=None,
        help="this client's copy of the chain (%(default)s: replicas/NAME-GENESISHASH.jsonl)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout-s", type=seconds, default=DEFAULT_CONNECT_TIMEOUT_S,
        help="keep retrying the connection this long",
    )  # fmt: skip
    parser.add_argument(
        "--timeout-s", type=seconds, default=DEFAULT_TIMEOUT_S,
        help="the longest wait for the server's next message",
    )  # fmt: skip
    parser.add_argument(
        "--max-frame-bytes", type=integer_in(1024, 2**32 - 1), default=DEFAULT_MAX_FRAME_BYTES,
        help="refuse any message longer than this",
    )  # fmt: skip
    args = parser.parse_args(argv)

    name = args.name  # every line says which client, for a terminal that shows several

    def say(line: str) -> None:
        print(line, flush=True)

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
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else str(error)
        print(f"error: {name}: connection to the server failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
