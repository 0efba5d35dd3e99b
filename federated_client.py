"""A client's side of a federated run: train the global model on rows that never leave this
process, send back only the weights, and keep a verified replica of the chain.

Every block the server sends is checked before its model is trusted: it links to this replica's
last block, its hash and work are right, this client's update is in it exactly as sent, and its
global model is the FedAvg of the client models it records.
"""

import argparse
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from block import Block, ClientUpdate
from blockchain import ChainError, verify_genesis, verify_next
from chain_store import ChainWriter, block_from_json
from cli_types import integer_in, port, seconds
from dataset import DEFAULT_TARGET, DataError, Dataset, load_dataset
from local_training import (
    DEFAULT_GENERATIONS,
    DEFAULT_POPULATION,
    LocalProblem,
    derive_seed,
    train_locally,
)
from model import LinearModel, mse
from protocol import (
    DEFAULT_HOST,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_PORT,
    ConnectionClosed,
    ProtocolError,
    receive_message,
    send_message,
    validate_message,
)

HERE = Path(__file__).resolve().parent
DEFAULT_CONNECT_TIMEOUT_S = 10.0  # the window in which the three programs may start in any order
DEFAULT_TIMEOUT_S = 300.0  # the longest wait for the server's next message
DEFAULT_REPLICA_DIR = Path("replicas")
RETRY_INTERVAL_S = 0.2
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ClientFailed(RuntimeError):
    """The run cannot go on for this client; the message says why."""


class FederatedClient:
    def __init__(
        self,
        *,
        name: str,
        data: Dataset,
        seed: int | None,
        generations: int,
        population: int,
        replica: Path | None,
        say: Callable[[str], None],
    ) -> None:
        self.name = name
        self.data = data
        self.problem = LocalProblem.from_data(data.X, data.y)
        self.seed = seed
        self.generations = generations
        self.population = population
        self.replica = replica
        self.say = say
        self.chain: list[Block] = []
        self.rounds = 0  # as the server announced it
        self.sent: tuple[int, ClientUpdate] | None = None  # the update awaiting its block

    def registration(self) -> dict:
        return {
            "type": "register",
            "name": self.name,
            "feature_names": list(self.data.feature_names),
            "n_samples": self.data.n_samples,
        }

    def run(self, sock: socket.socket, max_frame_bytes: int) -> list[Block]:
        """Take part in one run over SOCK; return the verified chain."""
        send_message(sock, self.registration())
        writer = None
        try:
            while True:
                message = receive_message(sock, max_frame_bytes=max_frame_bytes)
                kind = message["type"]
                if kind == "refused":
                    raise ClientFailed(f"the server refused: {message['reason']}")
                if kind == "welcome" and writer is None:
                    writer = self._accept_genesis(message)
                elif kind == "train" and writer is not None:
                    send_message(sock, self._train(message))
                elif kind == "block" and writer is not None:
                    self._accept_block(message["block"], writer)
                elif kind == "done" and writer is not None:
                    finished = len(self.chain) == self.rounds + 1 and self.sent is None
                    if message["blocks"] != len(self.chain) or not finished:
                        raise ClientFailed(
                            f"the server ended the run after {len(self.chain) - 1} of "
                            f"{self.rounds} rounds, with a chain we do not hold"
                        )
                    self.say(f"run complete: {len(self.chain)} blocks verified, in {writer.path}")
                    return self.chain
                else:
                    raise ClientFailed(f"unexpected {kind!r} message from the server")
        finally:
            if writer is not None:
                writer.close()

    def _accept_genesis(self, message: dict) -> ChainWriter:
        genesis = self._parse_block(message["genesis"])
        try:
            verify_genesis(genesis)
        except ChainError as error:
            raise ClientFailed(f"the server's genesis block is invalid: {error}") from None
        if genesis.feature_names != self.data.feature_names:
            raise ClientFailed("the run's features differ from this client's columns")
        if self.seed is None:
            self.seed = message["seed"]
        self.rounds = message["rounds"]
        path = self.replica or DEFAULT_REPLICA_DIR / f"{self.name}-{genesis.hash[:12]}.jsonl"
        try:
            writer = ChainWriter(path)
        except OSError as error:
            raise ClientFailed(f"cannot make the replica {path}: {error}") from None
        self._append(writer, genesis)
        self.say(f"joined; genesis {genesis.hash[:16]}… verified; replica in {path}")
        return writer

    def _train(self, message: dict) -> dict:
        index = message["round"]
        received = LinearModel(message["weights"], message["bias"])
        if self.sent is not None or index != self.chain[-1].index + 1 or index > self.rounds:
            raise ClientFailed(f"the server asked for round {index} out of turn")
        if received != self.chain[-1].server_model:
            raise ClientFailed(f"the global model for round {index} is not the one on the chain")
        started = time.perf_counter()
        try:
            trained = train_locally(
                self.problem,
                received,
                seed=derive_seed(self.seed, self.name, index),
                generations=self.generations,
                population=self.population,
            )
        except ValueError as error:
            raise ClientFailed(f"cannot train round {index}'s global model: {error}") from None
        train_s = time.perf_counter() - started
        before = mse(received, self.data.X, self.data.y)
        after = mse(trained, self.data.X, self.data.y)
        self.sent = (index, ClientUpdate(trained, self.data.n_samples))
        self.say(
            f"round {index}: trained in {train_s:.2f} s, local MSE {before:.4f} -> {after:.4f}"
        )
        # Only the model, the row count and two numbers about it leave this process.
        return {
            "type": "update",
            "round": index,
            "weights": trained.weights.copy(),
            "bias": trained.bias,
            "n_samples": self.data.n_samples,
            "metrics": {"local_mse": after, "train_s": train_s},
        }

    def _accept_block(self, text: str, writer: ChainWriter) -> None:
        block = self._parse_block(text)
        try:
            verify_next(self.chain[-1], block, genesis=self.chain[0])
        except ChainError as error:
            raise ClientFailed(f"the server's block does not verify: {error}") from None
        if self.sent is None or block.index != self.sent[0]:
            raise ClientFailed(f"block {block.index} arrived for a round we did not train")
        if block.client_model.get(self.name) != self.sent[1]:
            raise ClientFailed(f"block {block.index} does not hold our update as we sent it")
        self._append(writer, block)
        self.sent = None
        others = ", ".join(c for c in block.cli if c != self.name) or "no other client"
        self.say(
            f"block {block.index} verified: our update is in it as sent, with {others}; "
            f"FedAvg checks out (hash {block.hash[:16]}…)"
        )

    def _append(self, writer: ChainWriter, block: Block) -> None:
        try:
            writer.append(block)
        except OSError as error:
            raise ClientFailed(
                f"cannot write block {block.index} to {writer.path}: {error}"
            ) from None
        self.chain.append(block)

    @staticmethod
    def _parse_block(text: str) -> Block:
        try:
            return block_from_json(text)
        except (ValueError, TypeError) as error:
            raise ClientFailed(f"the server sent a malformed block: {error}") from None


def connect(host: str, port: int, *, within_s: float, timeout_s: float) -> socket.socket:
    """Connect to the server, retrying until WITHIN_S has passed, so start order is free."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=min(timeout_s, within_s))
        except OSError as error:
            if time.monotonic() + RETRY_INTERVAL_S > deadline:
                raise ClientFailed(
                    f"no server at {host}:{port} within {within_s:g} s ({error})"
                ) from None
            time.sleep(RETRY_INTERVAL_S)
            continue
        sock.settimeout(timeout_s)
        return sock


def _prepare_replica(replica: Path | None) -> None:
    if replica is not None and replica.exists():
        raise FileExistsError(f"{replica} already exists; choose another --replica")
    (replica.parent if replica is not None else DEFAULT_REPLICA_DIR).mkdir(
        parents=True, exist_ok=True
    )


def main(
    argv: Sequence[str] | None = None, *, default_name: str = "", default_data: str = ""
) -> int:
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

    name = args.name

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
        _prepare_replica(args.replica)
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
    except FileExistsError as error:
        print(f"error: {name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else str(error)
        print(f"error: {name}: connection to the server failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
