"""The server's side of a federated run: admit the clients, then round by round send the global
model, collect the clients' trained models, average them, and append the round to the chain.

One thread and a selector: a slow or silent peer never stops the others from being served, and
every wait has a deadline.
"""

import contextlib
import math
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from block import Block, ClientUpdate
from blockchain import make_genesis, make_round_block
from chain_store import ChainWriter, block_to_json
from dataset import Dataset
from model import LinearModel, mse
from protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    ConnectionClosed,
    ProtocolError,
    receive_message,
    send_message,
)

FRAME_TIMEOUT_S = 10.0  # how long one frame may take to arrive once it has started


class RunAborted(RuntimeError):
    """The run cannot go on; the message names the client, or the stage, and why."""


@dataclass(frozen=True)
class Peer:
    name: str
    sock: socket.socket
    address: str
    n_samples: int


@dataclass(frozen=True)
class RunSettings:
    n_clients: int
    rounds: int
    difficulty: int
    seed: int
    round_timeout_s: float
    join_timeout_s: float
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES


def run_federation(
    listener: socket.socket,
    settings: RunSettings,
    chain_path: Path,
    test_data: Dataset | None,
    say: Callable[[str], None],
) -> list[Block]:
    """Admit the clients and run every round; return the chain. Raises RunAborted on failure."""
    server = _Server(listener, settings, say)
    try:
        feature_names = test_data.feature_names if test_data else None
        peers = server.admit(feature_names)
        chain = [
            make_genesis(
                initial_model=LinearModel.zeros(len(server.feature_names)),
                feature_names=server.feature_names,
                difficulty=settings.difficulty,
            )
        ]
        # The file is made only now, so a run that never starts leaves nothing in the way.
        with ChainWriter(chain_path) as writer:
            writer.append(chain[0])
            genesis_json = block_to_json(chain[0])
            for peer in peers:
                welcome = {"type": "welcome", "genesis": genesis_json, "seed": settings.seed}
                server.send(peer, welcome)
            say(f"genesis block mined (hash {chain[0].hash[:16]}…); {settings.rounds} rounds to go")
            for index in range(1, settings.rounds + 1):
                chain.append(server.run_round(index, chain[-1], writer, test_data))
        for peer in peers:
            server.send(peer, {"type": "done", "blocks": len(chain)})
        return chain
    except RunAborted as error:
        server.abort(str(error))
        raise
    finally:
        server.close()


class _Server:
    def __init__(self, listener: socket.socket, settings: RunSettings, say: Callable) -> None:
        self.listener = listener
        self.settings = settings
        self.say = say
        self.peers: list[Peer] = []
        self.feature_names: tuple[str, ...] = ()
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, data=None)

    # --- admission ---------------------------------------------------------------------------

    def admit(self, feature_names: tuple[str, ...] | None) -> list[Peer]:
        """Wait for the clients to register; refuse (and keep waiting past) any bad newcomer."""
        if feature_names:
            self.feature_names = feature_names
        deadline = time.monotonic() + self.settings.join_timeout_s
        waiting: dict[socket.socket, str] = {}
        while len(self.peers) < self.settings.n_clients:
            try:
                ready = self._ready_before(deadline)
            except TimeoutError:
                self._refuse_all(waiting, "the server stopped waiting for clients")
                raise RunAborted(
                    f"only {len(self.peers)} of {self.settings.n_clients} clients joined within "
                    f"{self.settings.join_timeout_s:g} s"
                ) from None
            for key in ready:
                if key.data is None:
                    sock, address = self._accept()
                    waiting[sock] = address
                    self.selector.register(sock, selectors.EVENT_READ, data=address)
                else:
                    sock = key.fileobj
                    self.selector.unregister(sock)
                    self._register(sock, waiting.pop(sock))
        self._refuse_all(waiting, f"the run is full ({self.settings.n_clients} clients)")
        self.peers.sort(key=lambda p: p.name)  # the order every round hashes and averages in
        for peer in self.peers:
            self.selector.register(peer.sock, selectors.EVENT_READ, data=peer)
        return self.peers

    def _accept(self) -> tuple[socket.socket, str]:
        sock, (host, port, *_) = self.listener.accept()
        sock.settimeout(FRAME_TIMEOUT_S)
        return sock, f"{host}:{port}"

    def _register(self, sock: socket.socket, address: str) -> None:
        try:
            message = receive_message(sock, max_frame_bytes=self.settings.max_frame_bytes)
            peer = self._check_registration(sock, address, message)
        except (ProtocolError, _Refusal) as error:
            self.say(f"refused {address}: {error}")
            _send_quietly(sock, {"type": "refused", "reason": str(error)})
            sock.close()
            return
        except (ConnectionClosed, OSError) as error:
            self.say(f"dropped {address} before it registered: {_describe(error)}")
            sock.close()
            return
        self.peers.append(peer)
        self.say(
            f"{peer.name} joined from {address} with {peer.n_samples} rows "
            f"({len(self.peers)} of {self.settings.n_clients})"
        )

    def _check_registration(self, sock: socket.socket, address: str, message: dict) -> Peer:
        if message["type"] != "register":
            raise _Refusal(f"expected a register message first, not {message['type']!r}")
        name, features = message["name"], tuple(message["feature_names"])
        if any(p.name == name for p in self.peers):
            raise _Refusal(f"a client named {name!r} has already joined")
        if self.feature_names and features != self.feature_names:
            raise _Refusal(
                f"{name}'s features {list(features)} differ from the run's "
                f"{list(self.feature_names)}"
            )
        self.feature_names = features
        return Peer(name, sock, address, message["n_samples"])

    # --- rounds ------------------------------------------------------------------------------

    def run_round(
        self, index: int, previous: Block, writer: ChainWriter, test_data: Dataset | None
    ) -> Block:
        started = time.monotonic()
        global_model = previous.server_model
        train = {"type": "train", "round": index, "weights": global_model.weights.copy()}
        for peer in self.peers:
            self.send(peer, {**train, "bias": global_model.bias})
        received = self._collect_updates(index, started + self.settings.round_timeout_s)
        mining_started = time.monotonic()
        try:
            block = make_round_block(previous, {p.name: received[p.name][0] for p in self.peers})
        except ValueError as error:  # finite models whose weighted sum is not
            raise RunAborted(f"round {index}: the updates cannot be averaged: {error}") from None
        mining_s = time.monotonic() - mining_started
        writer.append(block)
        block_json = block_to_json(block)
        for peer in self.peers:
            self.send(peer, {"type": "block", "block": block_json})
        round_s = time.monotonic() - started
        parts = [f"round {index}"]
        for peer in self.peers:
            metrics = received[peer.name][1]  # reported by the client; shown, never trusted
            parts.append(
                f"{peer.name} local MSE {metrics.get('local_mse', math.nan):.4f} "
                f"(trained in {1000 * metrics.get('train_s', math.nan):.1f} ms)"
            )
        if test_data:
            parts.append(f"global test MSE {mse(block.server_model, test_data.X, test_data.y):.4f}")
        parts.append(f"nonce {block.nonce} mined in {1000 * mining_s:.1f} ms")
        parts.append(f"round {1000 * round_s:.1f} ms")
        parts.append(f"hash {block.hash[:16]}…")
        self.say(" | ".join(parts))
        return block

    def _collect_updates(self, index: int, deadline: float) -> dict[str, tuple[ClientUpdate, dict]]:
        received: dict[str, tuple[ClientUpdate, dict]] = {}
        while len(received) < len(self.peers):
            try:
                ready = self._ready_before(deadline)
            except TimeoutError:
                late = [p.name for p in self.peers if p.name not in received]
                raise RunAborted(
                    f"{', '.join(late)} sent no update for round {index} within "
                    f"{self.settings.round_timeout_s:g} s"
                ) from None
            for key in ready:
                if key.data is None:
                    sock, address = self._accept()
                    reason = "a run is in progress with all its clients"
                    self.say(f"refused {address}: {reason}")
                    _send_quietly(sock, {"type": "refused", "reason": reason})
                    sock.close()
                    continue
                peer = key.data
                if peer.name in received:
                    raise RunAborted(f"{peer.name} sent a second message in round {index}")
                received[peer.name] = self._receive_update(peer, index)
        return received

    def _receive_update(self, peer: Peer, index: int) -> tuple[ClientUpdate, dict]:
        try:
            message = receive_message(peer.sock, max_frame_bytes=self.settings.max_frame_bytes)
        except ProtocolError as error:
            raise RunAborted(f"{peer.name} sent a bad frame: {error}") from None
        except (ConnectionClosed, OSError) as error:
            raise RunAborted(f"{peer.name} disconnected: {_describe(error)}") from None
        if message["type"] != "update":
            raise RunAborted(f"{peer.name} sent {message['type']!r} instead of its update")
        if message["round"] != index:
            raise RunAborted(
                f"{peer.name} sent an update for round {message['round']}, not {index}"
            )
        if message["n_samples"] != peer.n_samples:
            raise RunAborted(
                f"{peer.name} claims {message['n_samples']} rows, but registered {peer.n_samples}"
            )
        if message["weights"].size != len(self.feature_names):
            raise RunAborted(
                f"{peer.name} sent {message['weights'].size} weights for "
                f"{len(self.feature_names)} features"
            )
        model = LinearModel(message["weights"], message["bias"])
        return ClientUpdate(model, peer.n_samples), message["metrics"]

    def _ready_before(self, deadline: float) -> list[selectors.SelectorKey]:
        """The sockets with something to read; TimeoutError once DEADLINE has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return [key for key, _ in self.selector.select(remaining)]

    # --- endings -----------------------------------------------------------------------------

    def send(self, peer: Peer, message: dict) -> None:
        try:
            send_message(peer.sock, message)
        except OSError as error:
            raise RunAborted(f"{peer.name} disconnected: {_describe(error)}") from None

    def abort(self, reason: str) -> None:
        for peer in self.peers:
            _send_quietly(peer.sock, {"type": "refused", "reason": f"run stopped: {reason}"})

    def _refuse_all(self, waiting: dict[socket.socket, str], reason: str) -> None:
        for sock in waiting:
            self.selector.unregister(sock)
            _send_quietly(sock, {"type": "refused", "reason": reason})
            sock.close()
        waiting.clear()

    def close(self) -> None:
        for peer in self.peers:
            peer.sock.close()
        self.selector.close()


class _Refusal(Exception):
    """A registration the server turns down, with the reason sent to that client."""


def _send_quietly(sock: socket.socket, message: dict) -> None:
    # A courtesy to a peer that is being turned away or told the run stopped; it may be gone.
    with contextlib.suppress(OSError):
        send_message(sock, message)


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out in the middle of a message"
    return str(error) or type(error).__name__
