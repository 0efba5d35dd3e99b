"""A client's side of a federated run: train the global model on rows that never leave this
process, send back only the weights, and keep a verified replica of the chain.

Every block the server sends is checked before its model is trusted: it links to this replica's
last block, its hash and work are right, this client's update is in it exactly as sent, and its
global model is the FedAvg of the client models it records.
"""

import socket
import time
from collections.abc import Callable
from pathlib import Path

from block import Block, ClientUpdate
from blockchain import ChainError, sample_counts_of, verify_genesis, verify_next
from chain_store import ChainWriter, block_from_json
from dataset import Dataset
from local_training import (
    LocalProblem,
    derive_seed,
    train_locally,
)
from model import LinearModel, mse
from protocol import ProtocolError, receive_message, send_message, validate_message

DEFAULT_CONNECT_TIMEOUT_S = 10.0  # the window in which the three programs may start in any order
DEFAULT_TIMEOUT_S = 300.0  # the longest wait for the server's next message
DEFAULT_REPLICA_DIR = Path("replicas")
RETRY_INTERVAL_S = 0.2


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
        self.sample_counts: dict[str, int] = {}  # each client's rows, as the chain recorded them
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
        try:
            self._append(writer, genesis)
        except ClientFailed:
            writer.close()
            raise
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
        update = {
            "type": "update",
            "round": index,
            "weights": trained.weights.copy(),
            "bias": trained.bias,
            "n_samples": self.data.n_samples,
            "metrics": {"local_mse": after, "train_s": train_s},
        }
        try:
            validate_message(update)  # our own fault, if it fails: say so, not "the server's"
        except ProtocolError as error:
            raise ClientFailed(f"our round {index} update cannot be sent: {error}") from None
        return update

    def _accept_block(self, text: str, writer: ChainWriter) -> None:
        block = self._parse_block(text)
        try:
            verify_next(
                self.chain[-1], block, genesis=self.chain[0], sample_counts=self.sample_counts
            )
        except ChainError as error:
            raise ClientFailed(f"the server's block does not verify: {error}") from None
        if self.sent is None or block.index != self.sent[0]:
            raise ClientFailed(f"block {block.index} arrived for a round we did not train")
        if block.client_model.get(self.name) != self.sent[1]:
            raise ClientFailed(f"block {block.index} does not hold our update as we sent it")
        self._append(writer, block)
        self.sample_counts |= sample_counts_of(block)
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


def prepare_replica(replica: Path | None) -> None:
    """Refuse an existing replica and make its folder now, before joining a run."""
    if replica is not None and replica.exists():
        raise FileExistsError(f"{replica} already exists; choose another --replica")
    (replica.parent if replica is not None else DEFAULT_REPLICA_DIR).mkdir(
        parents=True, exist_ok=True
    )
