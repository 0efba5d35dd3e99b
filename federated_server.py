"""The server's side of a federated run: admit the clients, then round by round send the global
model, collect the clients' trained models, average them, and append the round to the chain.

One thread and a selector. The server only ever reads what has already arrived and lets the
protocol assemble frames, so a peer that is silent, slow or stuck half-way through a message holds
up nobody, and every wait has a deadline.
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
from protocol import DEFAULT_MAX_FRAME_BYTES, FrameReader, ProtocolError, printable, send_message

DEFAULT_ROUNDS = 5
DEFAULT_RUN_SEED = 0
DEFAULT_ROUND_TIMEOUT_S = 60.0
DEFAULT_JOIN_TIMEOUT_S = 120.0
DEFAULT_REGISTER_TIMEOUT_S = 10.0  # a newcomer must have registered this long after connecting
SEND_TIMEOUT_S = 10.0  # a peer that will not take a message in this long is gone
MAX_WAITING = 32  # newcomers not yet registered; more are turned away at once


class RunAborted(RuntimeError):
    """The run cannot go on; the message names the client, or the stage, and why."""


class ChainUnavailable(RunAborted):
    """The chain file could not be made, so there is no chain of this run to show."""


@dataclass
class _Connection:
    """A peer's socket, the messages it has sent so far, and (once registered) who it is."""

    sock: socket.socket
    address: str
    reader: FrameReader
    connected_at: float
    name: str = ""
    n_samples: int = 0
    inbox: list[dict] = field(default_factory=list)


def run_federation(
    listener: socket.socket,
    *,
    chain_path: Path,
    test_data: Dataset | None,
    say: Callable[[str], None],
    n_clients: int,
    rounds: int = DEFAULT_ROUNDS,
    difficulty_bits: int,
    seed: int = DEFAULT_RUN_SEED,
    round_timeout_s: float = DEFAULT_ROUND_TIMEOUT_S,
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S,
    register_timeout_s: float = DEFAULT_REGISTER_TIMEOUT_S,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> list[Block]:
    """Admit the clients and run every round; return the chain. Raises RunAborted on failure."""
    server = _Server(listener, say, max_frame_bytes=max_frame_bytes)
    try:
        feature_names = test_data.feature_names if test_data else ()
        peers = server.admit(
            n_clients,
            feature_names,
            join_timeout_s=join_timeout_s,
            register_timeout_s=register_timeout_s,
        )
        genesis = make_genesis(
            initial_model=LinearModel.zeros(len(server.feature_names)),
            feature_names=server.feature_names,
            difficulty=difficulty_bits,
        )
        chain = [genesis]
        # The file is made only now, so a run that never starts leaves nothing in the way.
        try:
            writer = ChainWriter(chain_path)
        except OSError as error:
            raise ChainUnavailable(f"cannot make the chain file {chain_path}: {error}") from None
        with writer:
            server.append(writer, genesis)
            welcome = {"type": "welcome", "genesis": block_to_json(genesis), "seed": seed}
            for peer in peers:
                server.send(peer, {**welcome, "rounds": rounds})
            say(f"genesis block mined (hash {genesis.hash[:16]}…); {rounds} rounds to go")
            for index in range(1, rounds + 1):
                chain.append(server.run_round(index, chain[-1], writer, test_data, round_timeout_s))
        for peer in peers:
            server.send(peer, {"type": "done", "blocks": len(chain)})
        return chain
    except RunAborted as error:
        server.abort(str(error))
        raise
    finally:
        server.close()


class _Server:
    def __init__(self, listener: socket.socket, say: Callable, *, max_frame_bytes: int) -> None:
        self.listener = listener
        self.say = say
        self.max_frame_bytes = max_frame_bytes
        self.peers: list[_Connection] = []
        self.waiting: list[_Connection] = []
        self.feature_names: tuple[str, ...] = ()
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, data=None)

    # --- admission ---------------------------------------------------------------------------

    def admit(
        self,
        n_clients: int,
        feature_names: tuple[str, ...],
        *,
        join_timeout_s: float,
        register_timeout_s: float,
    ) -> list[_Connection]:
        """Wait for N_CLIENTS to register; refuse (and keep waiting past) any bad newcomer."""
        self.feature_names = feature_names
        deadline = time.monotonic() + join_timeout_s
        final_pass = False
        while True:
            full, expired = len(self.peers) == n_clients, time.monotonic() >= deadline
            if final_pass and full:
                break
            if final_pass and expired:
                raise RunAborted(
                    f"only {len(self.peers)} of {n_clients} clients joined within "
                    f"{join_timeout_s:g} s"
                )
            # When full or out of time, one pass without waiting decides: a client that left
            # at the last moment must not be counted in, and what has already arrived may yet
            # complete the run. One pass only, so arrivals cannot put the decision off.
            final_pass = full or expired
            if final_pass:
                ready = self._ready(time.monotonic())
            else:
                expiries = [c.connected_at + register_timeout_s for c in self.waiting]
                ready = self._ready(min([deadline, *expiries]))
            for connection in ready:
                if connection is None:
                    self._accept_newcomer()
                elif connection in self.waiting:
                    self._hear_newcomer(connection, n_clients)
                else:
                    self._hear_early_peer(connection, feature_names)
            self._expire_newcomers(register_timeout_s)
        for connection in list(self.waiting):
            self._turn_away(connection, _full(n_clients))
        self.peers.sort(key=lambda p: p.name)  # the order every round hashes and averages in
        return self.peers

    def _accept_newcomer(self) -> None:
        connection = self._accept()
        if connection is None:
            return
        if len(self.waiting) >= MAX_WAITING:
            self._refuse(connection, "too many connections are waiting to register")
            return
        self.waiting.append(connection)
        self.selector.register(connection.sock, selectors.EVENT_READ, data=connection)

    def _hear_newcomer(self, connection: _Connection, n_clients: int) -> None:
        try:
            messages = connection.reader.receive(connection.sock)
        except ProtocolError as error:
            self._turn_away(connection, str(error))
            return
        if messages is None:
            self._drop(connection, "it closed the connection before registering")
            return
        connection.inbox += messages
        if not connection.inbox:
            return  # part of a frame; the rest may follow
        try:
            self._check_registration(connection, n_clients)
        except _Refusal as error:
            self._turn_away(connection, str(error))
            return
        self.waiting.remove(connection)
        self.peers.append(connection)
        self.say(
            f"{connection.name} joined from {connection.address} with {connection.n_samples} "
            f"rows ({len(self.peers)} of {n_clients})"
        )

    def _check_registration(self, connection: _Connection, n_clients: int) -> None:
        message = connection.inbox.pop(0)
        if message["type"] != "register":
            raise _Refusal(f"expected a register message first, not {message['type']!r}")
        if connection.inbox:
            raise _Refusal("sent more than its registration before the run began")
        if len(self.peers) >= n_clients:
            raise _Refusal(_full(n_clients))
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

    def _hear_early_peer(self, peer: _Connection, feature_names: tuple[str, ...]) -> None:
        # A client that has joined has nothing to say until the first round: if its socket
        # stirs, it has left (and its name is free again, for a restart) or broken the protocol.
        try:
            still_there = peer.reader.receive(peer.sock) is not None
        except ProtocolError:
            still_there = True
        self.selector.unregister(peer.sock)
        self.peers.remove(peer)
        if not self.peers:
            self.feature_names = feature_names  # the first client to come sets them afresh
        if still_there:
            self._refuse(peer, "a client may not speak before the run begins")
        else:
            self.say(f"{peer.name} left before the run began ({len(self.peers)} joined)")
            peer.sock.close()

    def _expire_newcomers(self, register_timeout_s: float) -> None:
        now = time.monotonic()
        for connection in list(self.waiting):
            if now - connection.connected_at >= register_timeout_s:
                self._turn_away(connection, f"no registration within {register_timeout_s:g} s")

    # --- rounds ------------------------------------------------------------------------------

    def run_round(
        self,
        index: int,
        previous: Block,
        writer: ChainWriter,
        test_data: Dataset | None,
        timeout_s: float,
    ) -> Block:
        started = time.monotonic()
        model = previous.server_model
        train = {
            "type": "train",
            "round": index,
            "weights": model.weights.copy(),
            "bias": model.bias,
        }
        for peer in self.peers:
            self.send(peer, train)
        received = self._collect_updates(index, started + timeout_s, timeout_s)
        mining_started = time.monotonic()
        # The protocol caps every number at 1e100, so the weighted sum cannot overflow.
        block = make_round_block(previous, {p.name: received[p.name][0] for p in self.peers})
        mining_s = time.monotonic() - mining_started
        self.append(writer, block)
        announcement = {"type": "block", "block": block_to_json(block)}
        for peer in self.peers:
            self.send(peer, announcement)
        round_s = time.monotonic() - started
        parts = [f"round {index}"]
        for peer in self.peers:
            metrics = received[peer.name][1]  # reported by the client; shown, never trusted
            parts.append(
                f"{peer.name} local MSE {metrics.get('local_mse', math.nan):.4g} "
                f"(trained in {1000 * metrics.get('train_s', math.nan):.1f} ms)"
            )
        if test_data:
            parts.append(f"global test MSE {mse(block.server_model, test_data.X, test_data.y):.4g}")
        parts.append(f"nonce {block.nonce} mined in {1000 * mining_s:.1f} ms")
        parts.append(f"round {1000 * round_s:.1f} ms")
        parts.append(f"hash {block.hash[:16]}…")
        self.say(" | ".join(parts))
        return block

    def _collect_updates(
        self, index: int, deadline: float, timeout_s: float
    ) -> dict[str, tuple[ClientUpdate, dict]]:
        received: dict[str, tuple[ClientUpdate, dict]] = {}
        final_pass = False
        while len(received) < len(self.peers):
            expired = time.monotonic() >= deadline
            if expired and final_pass:
                late = ", ".join(p.name for p in self.peers if p.name not in received)
                raise RunAborted(f"{late} sent no update for round {index} within {timeout_s:g} s")
            # Past the deadline, one more pass without waiting reads what has already
            # arrived, so a peer is never blamed for time another peer's message took.
            final_pass = expired
            for peer in self._ready(time.monotonic() if expired else deadline):
                if peer is None:
                    if connection := self._accept():
                        self._refuse(connection, "a run is in progress with all its clients")
                    continue
                try:
                    messages = peer.reader.receive(peer.sock)
                except ProtocolError as error:
                    raise RunAborted(f"{peer.name} sent a bad frame: {error}") from None
                if messages is None:
                    raise RunAborted(f"{peer.name} disconnected")
                for message in messages:
                    if peer.name in received:
                        raise RunAborted(f"{peer.name} sent a second message in round {index}")
                    received[peer.name] = self._check_update(peer, message, index)
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

    # --- plumbing ----------------------------------------------------------------------------

    def _ready(self, wake_at: float) -> list[_Connection | None]:
        """The connections with bytes to read (None: the listener), waiting until WAKE_AT."""
        timeout = max(0.0, wake_at - time.monotonic())
        return [key.data for key, _ in self.selector.select(timeout)]

    def _accept(self) -> _Connection | None:
        try:
            sock, (host, port, *_) = self.listener.accept()
        except OSError as error:  # out of file descriptors, say: the others go on
            self.say(f"could not accept a connection: {error}")
            time.sleep(0.1)  # the pending connection stays readable; do not spin on it
            return None
        sock.settimeout(SEND_TIMEOUT_S)
        reader = FrameReader(self.max_frame_bytes)
        return _Connection(sock, f"{host}:{port}", reader, time.monotonic())

    def send(self, peer: _Connection, message: dict) -> None:
        try:
            send_message(peer.sock, message)
        except OSError as error:
            reason = str(error) or type(error).__name__
            raise RunAborted(f"{peer.name} disconnected: {reason}") from None
        except ProtocolError as error:  # a message this server cannot put on the wire
            raise RunAborted(f"cannot send {message['type']!r} to {peer.name}: {error}") from None

    def append(self, writer: ChainWriter, block: Block) -> None:
        try:
            writer.append(block)
        except OSError as error:  # a full disk, say: every block before this one is safe
            raise RunAborted(f"cannot write block {block.index}: {error}") from None

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
        message = {"type": "refused", "reason": printable(f"run stopped: {reason}")}
        for peer in self.peers:
            _send_quietly(peer.sock, message)

    def close(self) -> None:
        for connection in [*self.peers, *self.waiting]:
            connection.sock.close()
        self.selector.close()


def _full(n_clients: int) -> str:
    return f"the run is full ({n_clients} client{'s' if n_clients != 1 else ''})"


class _Refusal(Exception):
    """A registration the server turns down, with the reason sent to that client."""


def _send_quietly(sock: socket.socket, message: dict) -> None:
    # A courtesy to a peer that is being turned away or told the run stopped; it may be gone.
    with contextlib.suppress(OSError):
        send_message(sock, message)
