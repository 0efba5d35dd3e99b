"""The server's side of a federated run: admit the clients, then round by round send the global
model, collect the clients' trained models, average them, and append the round to the chain.

One thread and a selector. The server only ever reads what has already arrived and assembles
frames itself, so a peer that is silent, slow or stuck half-way through a message holds up nobody,
and every wait has a deadline.
"""

import contextlib
import math
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from block import Block, ClientUpdate
from blockchain import make_genesis, make_round_block
from chain_store import ChainWriter, block_to_json
from dataset import Dataset
from model import LinearModel, mse
from protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameReader,
    ProtocolError,
    printable,
    send_message,
)

REGISTER_TIMEOUT_S = 10.0  # a newcomer must have registered this long after connecting
SEND_TIMEOUT_S = 10.0  # a peer that will not take a message in this long is gone
MAX_WAITING = 32  # newcomers not yet registered; more are turned away at once
RECEIVE_BYTES = 1 << 16


class RunAborted(RuntimeError):
    """The run cannot go on; the message names the client, or the stage, and why."""


@dataclass(frozen=True)
class RunSettings:
    n_clients: int
    rounds: int
    difficulty: int
    seed: int
    round_timeout_s: float
    join_timeout_s: float
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES


@dataclass
class _Connection:
    """A peer's socket, what it has sent so far, and (once registered) who it is."""

    sock: socket.socket
    address: str
    reader: FrameReader
    connected_at: float
    name: str = ""
    n_samples: int = 0
    inbox: list[dict] = field(default_factory=list)


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
        peers = server.admit(test_data.feature_names if test_data else None)
        chain = [
            make_genesis(
                initial_model=LinearModel.zeros(len(server.feature_names)),
                feature_names=server.feature_names,
                difficulty=settings.difficulty,
            )
        ]
        # The file is made only now, so a run that never starts leaves nothing in the way.
        try:
            writer = ChainWriter(chain_path)
        except OSError as error:
            raise RunAborted(f"cannot make the chain file: {error}") from None
        with writer:
            server.append(writer, chain[0])
            genesis_json = block_to_json(chain[0])
            for peer in peers:
                welcome = {"type": "welcome", "genesis": genesis_json, "rounds": settings.rounds}
                server.send(peer, {**welcome, "seed": settings.seed})
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
        self.peers: list[_Connection] = []
        self.waiting: list[_Connection] = []
        self.feature_names: tuple[str, ...] = ()
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, data=None)

    # --- admission ---------------------------------------------------------------------------

    def admit(self, feature_names: tuple[str, ...] | None) -> list[_Connection]:
        """Wait for the clients to register; refuse (and keep waiting past) any bad newcomer."""
        self.feature_names = feature_names or ()
        deadline = time.monotonic() + self.settings.join_timeout_s
        while len(self.peers) < self.settings.n_clients:
            expiries = [c.connected_at + REGISTER_TIMEOUT_S for c in self.waiting]
            try:
                ready = self._ready_before(min([deadline, *expiries]), stop_at=deadline)
            except TimeoutError:
                raise RunAborted(
                    f"only {len(self.peers)} of {self.settings.n_clients} clients joined within "
                    f"{self.settings.join_timeout_s:g} s"
                ) from None
            for connection in ready:
                if connection is None:
                    self._accept_newcomer()
                elif connection in self.waiting:
                    self._hear_newcomer(connection)
                else:
                    self._hear_early_peer(connection)
            self._expire_newcomers()
        for connection in list(self.waiting):
            self._turn_away(connection, f"the run is full ({self.settings.n_clients} clients)")
        self.peers.sort(key=lambda p: p.name)  # the order every round hashes and averages in
        return self.peers

    def _accept_newcomer(self) -> None:
        try:
            sock, (host, port, *_) = self.listener.accept()
        except OSError as error:  # out of file descriptors, say: the others go on
            self.say(f"could not accept a connection: {error}")
            time.sleep(0.1)  # the pending connection stays readable; do not spin on it
            return
        sock.settimeout(SEND_TIMEOUT_S)
        connection = _Connection(
            sock, f"{host}:{port}", FrameReader(self.settings.max_frame_bytes), time.monotonic()
        )
        if len(self.waiting) >= MAX_WAITING:
            self._refuse(connection, "too many connections are waiting to register")
            return
        self.waiting.append(connection)
        self.selector.register(sock, selectors.EVENT_READ, data=connection)

    def _hear_newcomer(self, connection: _Connection) -> None:
        try:
            if not self._receive(connection):
                self._drop(connection, "it closed the connection before registering")
                return
        except ProtocolError as error:
            self._turn_away(connection, str(error))
            return
        if not connection.inbox:
            return  # part of a frame; the rest may follow
        message = connection.inbox.pop(0)
        try:
            self._check_registration(connection, message)
        except _Refusal as error:
            self._turn_away(connection, str(error))
            return
        self.waiting.remove(connection)
        self.peers.append(connection)
        self.say(
            f"{connection.name} joined from {connection.address} with {connection.n_samples} "
            f"rows ({len(self.peers)} of {self.settings.n_clients})"
        )

    def _hear_early_peer(self, peer: _Connection) -> None:
        # A client that has joined has nothing to say until the first round: if its socket
        # stirs, it has left (and its name is free again, for a restart) or broken the protocol.
        try:
            still_there = self._receive(peer)
        except ProtocolError:
            still_there = True
        self.selector.unregister(peer.sock)
        self.peers.remove(peer)
        if still_there:
            self._refuse(peer, "a client may not speak before the run begins")
        else:
            self.say(f"{peer.name} left before the run began ({len(self.peers)} joined)")
            peer.sock.close()

    def _check_registration(self, connection: _Connection, message: dict) -> None:
        if message["type"] != "register":
            raise _Refusal(f"expected a register message first, not {message['type']!r}")
        if connection.inbox:
            raise _Refusal("sent more than its registration before the run began")
        name, features = message["name"], tuple(message["feature_names"])
        if any(p.name == name for p in self.peers):
            raise _Refusal(f"a client named {name!r} has already joined")
        if self.feature_names and features != self.feature_names:
            raise _Refusal(
                f"{name}'s features {list(features)} differ from the run's "
                f"{list(self.feature_names)}"
            )
        self.feature_names = features
        connection.name, connection.n_samples = name, message["n_samples"]

    def _expire_newcomers(self) -> None:
        now = time.monotonic()
        for connection in list(self.waiting):
            if now - connection.connected_at >= REGISTER_TIMEOUT_S:
                self._turn_away(connection, f"no registration within {REGISTER_TIMEOUT_S:g} s")

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
        # The protocol caps every number at 1e100, so the weighted sum cannot overflow.
        block = make_round_block(previous, {p.name: received[p.name][0] for p in self.peers})
        mining_s = time.monotonic() - mining_started
        self.append(writer, block)
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
                ready = self._ready_before(deadline, stop_at=deadline)
            except TimeoutError:
                late = [p.name for p in self.peers if p.name not in received]
                raise RunAborted(
                    f"{', '.join(late)} sent no update for round {index} within "
                    f"{self.settings.round_timeout_s:g} s"
                ) from None
            for peer in ready:
                if peer is None:
                    self._accept_during_run()
                    continue
                try:
                    if not self._receive(peer):
                        raise RunAborted(f"{peer.name} disconnected")
                except ProtocolError as error:
                    raise RunAborted(f"{peer.name} sent a bad frame: {error}") from None
                while peer.inbox:
                    if peer.name in received:
                        raise RunAborted(f"{peer.name} sent a second message in round {index}")
                    received[peer.name] = self._check_update(peer, peer.inbox.pop(0), index)
        return received

    def _check_update(self, peer: _Connection, message: dict, index: int) -> tuple:
        if message["type"] != "update":
            raise RunAborted(f"{peer.name} sent {message['type']!r} instead of its update")
        if message["round"] != index:
            raise RunAborted(f"{peer.name} sent round {message['round']}'s update in round {index}")
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

    def _accept_during_run(self) -> None:
        try:
            sock, (host, port, *_) = self.listener.accept()
        except OSError as error:
            self.say(f"could not accept a connection: {error}")
            time.sleep(0.1)
            return
        sock.settimeout(SEND_TIMEOUT_S)
        connection = _Connection(sock, f"{host}:{port}", FrameReader(), time.monotonic())
        self._refuse(connection, "a run is in progress with all its clients")

    def append(self, writer: ChainWriter, block: Block) -> None:
        try:
            writer.append(block)
        except OSError as error:  # a full disk, say: every block before this one is safe
            raise RunAborted(
                f"cannot write block {block.index} to {writer.path}: {error}"
            ) from None

    # --- plumbing ----------------------------------------------------------------------------

    def _ready_before(self, wake_at: float, *, stop_at: float) -> list[_Connection | None]:
        """The connections with bytes to read (None: the listener), waiting until WAKE_AT at
        the latest; TimeoutError once STOP_AT has passed."""
        now = time.monotonic()
        if now >= stop_at:
            raise TimeoutError
        return [key.data for key, _ in self.selector.select(max(0.0, wake_at - now))]

    def _receive(self, connection: _Connection) -> bool:
        """Read what has arrived into the connection's inbox; False if the peer has closed."""
        try:
            data = connection.sock.recv(RECEIVE_BYTES)
        except OSError:
            return False
        if not data:
            return False
        connection.inbox += connection.reader.feed(data)
        return True

    def send(self, peer: _Connection, message: dict) -> None:
        try:
            send_message(peer.sock, message)
        except OSError as error:
            reason = str(error) or type(error).__name__
            raise RunAborted(f"{peer.name} disconnected: {reason}") from None
        except ProtocolError as error:  # a message this server cannot put on the wire
            raise RunAborted(f"cannot send {message['type']!r} to {peer.name}: {error}") from None

    def _turn_away(self, connection: _Connection, reason: str) -> None:
        self.selector.unregister(connection.sock)
        self.waiting.remove(connection)
        self._refuse(connection, reason)

    def _refuse(self, connection: _Connection, reason: str) -> None:
        reason = printable(reason)
        self.say(f"refused {connection.address}: {reason}")
        _send_quietly(connection.sock, {"type": "refused", "reason": reason})
        connection.sock.close()

    def _drop(self, connection: _Connection, reason: str) -> None:
        self.selector.unregister(connection.sock)
        self.waiting.remove(connection)
        self.say(f"dropped {connection.address}: {reason}")
        connection.sock.close()

    def abort(self, reason: str) -> None:
        for peer in self.peers:
            message = {"type": "refused", "reason": printable(f"run stopped: {reason}")}
            _send_quietly(peer.sock, message)

    def close(self) -> None:
        for connection in [*self.peers, *self.waiting]:
            connection.sock.close()
        self.selector.close()


class _Refusal(Exception):
    """A registration the server turns down, with the reason sent to that client."""


def _send_quietly(sock: socket.socket, message: dict) -> None:
    # A courtesy to a peer that is being turned away or told the run stopped; it may be gone.
    with contextlib.suppress(OSError):
        send_message(sock, message)
