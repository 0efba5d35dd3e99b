"""A client's side of a federated run: train the global model on rows that never leave this
process, send back only the weights, and keep a verified replica of the chain.

Every block the server sends is checked before its model is trusted: it links to this replica's
last block, its hash and work are right, this client's update is in it exactly as sent, and its
global model is the FedAvg of the client models it records.
"""

import enum
import socket
import time
from collections.abc import Callable
from pathlib import Path

from fedchain import settings
from fedchain.learning.dataset import DataError, Dataset
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.learning.local_training import LocalProblem, derive_seed, train_locally
from fedchain.ledger.block import Block, ClientUpdate
from fedchain.ledger.chain import Chain
from fedchain.ledger.store import ChainWriter, block_from_json
from fedchain.ledger.verification import ChainError, verify_genesis
from fedchain.wire.frames import receive_message, send_message
from fedchain.wire.messages import ProtocolError, validate_message

RETRY_INTERVAL_S = 0.2


class ClientFailed(RuntimeError):
    """The run cannot go on for this client; the message says why."""


class Stage(enum.Enum):
    """Where a client is in a run, and so which message it may take next."""

    JOINING = "waiting to be welcomed"
    READY = "waiting for the next round"
    AWAITING_BLOCK = "waiting for the block of the round it trained"
    DONE = "finished"


_EXPECTED = {
    Stage.JOINING: {"welcome"},
    Stage.READY: {"train", "done"},
    Stage.AWAITING_BLOCK: {"block"},
    Stage.DONE: set(),
}


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
        # Built now as well as after the welcome, so rows too large to use fail before joining.
        self.problem = LocalProblem.from_data(data.X, data.y)
        self.seed = seed
        self.generations = generations
        self.population = population
        self.replica = replica
        self.say = say
        self.stage = Stage.JOINING
        self.chain: Chain | None = None
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
            while self.stage is not Stage.DONE:
                message = receive_message(sock, max_frame_bytes=max_frame_bytes)
                kind = message["type"]
                if kind == "refused":
                    raise ClientFailed(f"the server refused: {message['reason']}")
                if kind not in _EXPECTED[self.stage]:
                    raise ClientFailed(
                        f"the server sent a {kind!r} message while this client was "
                        f"{self.stage.value}"
                    )
                if kind == "welcome":
                    writer = self._accept_genesis(message)
                elif kind == "train":
                    send_message(sock, self._train(message))
                elif kind == "block":
                    self._accept_block(message["block"])
                else:
                    self._finish(message)
            return self.chain.blocks
        finally:
            if writer is not None:
                writer.close()

    def _accept_genesis(self, message: dict) -> ChainWriter:
        genesis = self._parse_block(message["genesis"])
        try:
            verify_genesis(genesis)
        except ChainError as error:
            raise ClientFailed(f"the server's genesis block is invalid: {error}") from None
        try:
            # Columns are matched by name: the model's weights follow the run's order.
            self.data = self.data.in_order(genesis.feature_names)
        except DataError as error:
            raise ClientFailed(
                f"the run's features do not fit this client's rows: {error}"
            ) from None
        self.problem = LocalProblem.from_data(self.data.X, self.data.y)
        if self.seed is None:
            self.seed = message["seed"]
        self.rounds = message["rounds"]
        path = self.replica or settings.REPLICA_DIR / f"{self.name}-{genesis.hash[:12]}.jsonl"
        try:
            writer = ChainWriter(path)
        except OSError as error:
            raise ClientFailed(f"cannot make the replica {path}: {error}") from None
        try:
            self.chain = Chain(genesis, store=writer)
        except ChainError as error:
            writer.close()
            raise ClientFailed(f"the server's genesis block is invalid: {error}") from None
        except OSError as error:
            writer.close()
            raise ClientFailed(f"cannot write block 0 to {path}: {error}") from None
        self.stage = Stage.READY
        self.say(f"joined; genesis {genesis.hash[:16]}… verified; replica in {path}")
        return writer

    def _train(self, message: dict) -> dict:
        index = message["round"]
        received = LinearModel(message["weights"], message["bias"])
        if index != self.chain.last.index + 1 or index > self.rounds:
            raise ClientFailed(f"the server asked for round {index} out of turn")
        if received != self.chain.last.server_model:
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
        self.sent = (index, ClientUpdate(trained, self.data.n_samples))
        self.stage = Stage.AWAITING_BLOCK
        return update

    def _accept_block(self, text: str) -> None:
        block = self._parse_block(text)
        index, update = self.sent
        # Judged before it is appended: the replica must never hold a block without our update.
        if block.index != index:
            raise ClientFailed(f"block {block.index} arrived for a round we did not train")
        if block.client_model.get(self.name) != update:
            raise ClientFailed(f"block {block.index} does not hold our update as we sent it")
        try:
            self.chain.append(block)
        except ChainError as error:
            raise ClientFailed(f"the server's block does not verify: {error}") from None
        except OSError as error:
            raise ClientFailed(
                f"cannot write block {block.index} to the replica: {error}"
            ) from None
        self.sent = None
        self.stage = Stage.READY
        others = ", ".join(c for c in block.cli if c != self.name) or "no other client"
        self.say(
            f"block {block.index} verified: our update is in it as sent, with {others}; "
            f"FedAvg checks out (hash {block.hash[:16]}…)"
        )

    def _finish(self, message: dict) -> None:
        held = len(self.chain.blocks)
        if message["blocks"] != held or held != self.rounds + 1:
            raise ClientFailed(
                f"the server ended the run after {held - 1} of {self.rounds} rounds, "
                "with a chain we do not hold"
            )
        self.stage = Stage.DONE
        self.say(f"run complete: {held} blocks verified, in {self.chain.store.path}")

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
                    f"no server at {host}:{port} within {within_s:g} s "
                    f"(--connect-timeout-s): {error}"
                ) from None
            time.sleep(RETRY_INTERVAL_S)
            continue
        sock.settimeout(timeout_s)
        return sock


def prepare_replica(replica: Path | None) -> None:
    """Refuse an existing replica and make its folder now, before joining a run."""
    if replica is not None and replica.exists():
        raise FileExistsError(f"{replica} already exists; choose another --replica")
    (replica.parent if replica is not None else settings.REPLICA_DIR).mkdir(
        parents=True, exist_ok=True
    )
