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

from fedchain import settings
from fedchain.checks import printable
from fedchain.learning.dataset import Dataset, column_difference
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.ledger.block import Block, ClientUpdate
from fedchain.ledger.chain import Chain, make_genesis, make_round_block
from fedchain.ledger.store import ChainWriter, block_to_json
from fedchain.wire.frames import FrameReader, send_message
from fedchain.wire.messages import ProtocolError

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


class FederationServer:
    """Runs one federation on a listening socket. Settings are plain attributes: set any of them
    before run(), as with the standard library's socketserver."""

    n_clients: int = settings.CLIENTS
    rounds: int = settings.ROUNDS
    difficulty_bits: int = settings.DIFFICULTY_BITS
    seed: int = settings.RUN_SEED
    round_timeout_s: float = settings.ROUND_TIMEOUT_S
    join_timeout_s: float = settings.JOIN_TIMEOUT_S
    register_timeout_s: float = settings.REGISTER_TIMEOUT_S
    send_timeout_s: float = settings.SEND_TIMEOUT_S
    max_frame_bytes: int = settings.MAX_FRAME_BYTES
    test_data: Dataset | None = None  # held-out rows each global model is scored on
    # The features a run expects, in the order its weights take. Empty: test_data's columns if
    # it is given, else the first client to join sets them.
    feature_names: tuple[str, ...] = ()

    def __init__(
        self, listener: socket.socket, chain_path: Path, say: Callable[[str], None]
    ) -> None:
        self.listener = listener
        self.chain_path = chain_path
        self.say = say
        self.peers: list[_Connection] = []
        self.waiting: list[_Connection] = []
        self.run_features: tuple[str, ...] = ()  # fixed for the run once known
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, data=None)

    def run(self) -> list[Block]:
        """Admit the clients and run every round; return the chain. Raises RunAborted."""
        try:
            self._admit()
            genesis = make_genesis(
                initial_model=LinearModel.zeros(len(self.run_features)),
                feature_names=self.run_features,
                difficulty=self.difficulty_bits,
            )
            # The file is made only now, so a run that never starts leaves nothing in the way.
            try:
                writer = ChainWriter(self.chain_path)
            except OSError as error:
                raise ChainUnavailable(
                    f"cannot make the chain file {self.chain_path}: {error}"
                ) from None
            with writer:
                chain = self._start_chain(genesis, writer)
                welcome = {"type": "welcome", "genesis": block_to_json(genesis),
                           "seed": self.seed, "rounds": self.rounds}  # fmt: skip
                for peer in self.peers:
                    self.send(peer, welcome)
                self.say(
                    f"genesis block mined (hash {genesis.hash[:16]}…); {self.rounds} rounds to go"
                )
                for index in range(1, self.rounds + 1):
                    self._run_round(index, chain)
            for peer in self.peers:
                self.send(peer, {"type": "done", "blocks": len(chain.blocks)})
            return chain.blocks
        except RunAborted as error:
            self._abort(str(error))
            raise
        finally:
            self._close()

    # --- the one wait ----------------------------------------------------------------------

    def _serve_until(
        self,
        deadline: float,
        finished: Callable[[], bool],
        handle: Callable[[_Connection | None], None],
        wake_at: Callable[[], float] = lambda: math.inf,
    ) -> bool:
        """Hand every connection with bytes to read (None: the listener) to HANDLE until
        FINISHED() or DEADLINE; return FINISHED() as it stands after one last look."""
        # When finished or out of time, one pass without waiting decides: what has already
        # arrived may yet finish the wait, and a peer that left at the last moment must not be
        # counted. One pass only, so new arrivals cannot put the decision off.
        last_look = False
        while True:
            settled = finished() or time.monotonic() >= deadline
            if last_look and settled:
                return finished()
            last_look = settled
            wake = time.monotonic() if settled else min(deadline, wake_at())
            for connection in self._ready(wake):
                handle(connection)
            self._expire_newcomers()

    def _ready(self, wake_at: float) -> list[_Connection | None]:
        timeout = max(0.0, wake_at - time.monotonic())
        return [key.data for key, _ in self.selector.select(timeout)]

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> None:
        """Wait for n_clients to register; refuse (and keep waiting past) any bad newcomer."""
        if self.feature_names:
            self._fix_features(self.feature_names, "the server's setting")
        elif self.test_data is not None:
            self.feature_names = self.test_data.feature_names
            self._fix_features(self.feature_names, "the test data")

        def handle(connection: _Connection | None) -> None:
            if connection is None:
                self._accept_newcomer()
            elif connection in self.waiting:
                self._hear_newcomer(connection)
            else:
                self._hear_early_peer(connection)

        def next_expiry() -> float:
            return min(
                (c.connected_at + self.register_timeout_s for c in self.waiting), default=math.inf
            )

        deadline = time.monotonic() + self.join_timeout_s
        if not self._serve_until(
            deadline, lambda: len(self.peers) == self.n_clients, handle, next_expiry
        ):
            raise RunAborted(
                f"only {len(self.peers)} of {self.n_clients} clients joined within "
                f"{self.join_timeout_s:g} s (--join-timeout-s)"
            )
        for connection in list(self.waiting):
            self._turn_away(connection, self._full())
        self.peers.sort(key=lambda p: p.name)  # the order every round hashes and averages in

    def _fix_features(self, features: tuple[str, ...], source: str) -> None:
        self.run_features = features
        shown = ", ".join(features[:8]) + (", …" if len(features) > 8 else "")
        self.say(f"the run's features, from {source}: {len(features)} columns ({shown})")

    def _accept_newcomer(self) -> None:
        connection = self._accept()
        if connection is None:
            return
        if len(self.waiting) >= MAX_WAITING:
            self._refuse(connection, "too many connections are waiting to register")
            return
        self.waiting.append(connection)
        self.selector.register(connection.sock, selectors.EVENT_READ, data=connection)

    def _hear_newcomer(self, connection: _Connection) -> None:
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
            self._check_registration(connection)
        except _Refusal as error:
            self._turn_away(connection, str(error))
            return
        self.waiting.remove(connection)
        self.peers.append(connection)
        self.say(
            f"{connection.name} joined from {connection.address} with {connection.n_samples} "
            f"rows ({len(self.peers)} of {self.n_clients})"
        )

    def _check_registration(self, connection: _Connection) -> None:
        message = connection.inbox.pop(0)
        if message["type"] != "register":
            raise _Refusal(f"expected a register message first, not {message['type']!r}")
        if connection.inbox:
            raise _Refusal("sent more than its registration before the run began")
        if len(self.peers) >= self.n_clients:
            raise _Refusal(self._full())
        name, features = message["name"], tuple(message["feature_names"])
        if any(p.name == name for p in self.peers):
            raise _Refusal(f"a client named {name!r} has already joined")
        # Columns are matched by name: a client may hold them in any order.
        if self.run_features and (difference := column_difference(self.run_features, features)):
            raise _Refusal(f"{name}'s columns differ from the run's: {difference}")
        if not self.run_features:
            self._fix_features(features, name)
        connection.name, connection.n_samples = name, message["n_samples"]

    def _hear_early_peer(self, peer: _Connection) -> None:
        # A client that has joined has nothing to say until the first round: if its socket
        # stirs, it has left (and its name is free again, for a restart) or broken the protocol.
        try:
            still_there = peer.reader.receive(peer.sock) is not None
        except ProtocolError:
            still_there = True
        self.selector.unregister(peer.sock)
        self.peers.remove(peer)
        if not self.peers:
            self.run_features = self.feature_names  # the first client to come sets them afresh
        if still_there:
            self._refuse(peer, "a client may not speak before the run begins")
        else:
            self.say(f"{peer.name} left before the run began ({len(self.peers)} joined)")
            peer.sock.close()

    def _expire_newcomers(self) -> None:
        now = time.monotonic()
        for connection in list(self.waiting):
            if now - connection.connected_at >= self.register_timeout_s:
                self._turn_away(
                    connection,
                    f"no registration within {self.register_timeout_s:g} s (--register-timeout-s)",
                )

    def _full(self) -> str:
        return f"the run is full ({self.n_clients} client{'s' if self.n_clients != 1 else ''})"

    # --- rounds ------------------------------------------------------------------------------

    def _start_chain(self, genesis: Block, writer: ChainWriter) -> Chain:
        try:
            return Chain(genesis, store=writer)
        except OSError as error:  # a full disk, say
            raise RunAborted(f"cannot write block 0: {error}") from None

    def _run_round(self, index: int, chain: Chain) -> None:
        started = time.monotonic()
        model = chain.last.server_model
        train = {
            "type": "train",
            "round": index,
            "weights": model.weights.copy(),
            "bias": model.bias,
        }
        for peer in self.peers:
            self.send(peer, train)
        received = self._collect_updates(index, started + self.round_timeout_s)
        mining_started = time.monotonic()
        # The protocol caps every number at 1e100, so the weighted sum cannot overflow.
        block = make_round_block(chain.last, {p.name: received[p.name][0] for p in self.peers})
        mining_s = time.monotonic() - mining_started
        try:
            chain.append(block)
        except OSError as error:  # a full disk, say: every block before this one is safe
            raise RunAborted(f"cannot write block {block.index}: {error}") from None
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
        if self.test_data:
            test_mse = mse(block.server_model, self.test_data.X, self.test_data.y)
            parts.append(f"global test MSE {test_mse:.4g}")
        parts.append(f"nonce {block.nonce} mined in {1000 * mining_s:.1f} ms")
        parts.append(f"round {1000 * round_s:.1f} ms")
        parts.append(f"hash {block.hash[:16]}…")
        self.say(" | ".join(parts))

    def _collect_updates(self, index: int, deadline: float) -> dict[str, tuple[ClientUpdate, dict]]:
        received: dict[str, tuple[ClientUpdate, dict]] = {}

        def handle(peer: _Connection | None) -> None:
            if peer is None:
                if connection := self._accept():
                    self._refuse(connection, "a run is in progress with all its clients")
                return
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

        # Past the deadline, the last look reads what has already arrived, so a peer is never
        # blamed for time another peer's message took.
        if not self._serve_until(deadline, lambda: len(received) == len(self.peers), handle):
            late = ", ".join(p.name for p in self.peers if p.name not in received)
            raise RunAborted(
                f"{late} sent no update for round {index} within {self.round_timeout_s:g} s "
                "(--round-timeout-s)"
            )
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
        if message["weights"].size != len(self.run_features):
            raise RunAborted(
                f"{peer.name} sent {message['weights'].size} weights for "
                f"{len(self.run_features)} features"
            )
        model = LinearModel(message["weights"], message["bias"])
        return ClientUpdate(model, peer.n_samples), message["metrics"]

    # --- plumbing ----------------------------------------------------------------------------

    def _accept(self) -> _Connection | None:
        try:
            sock, (host, port, *_) = self.listener.accept()
        except OSError as error:  # out of file descriptors, say: the others go on
            self.say(f"could not accept a connection: {error}")
            time.sleep(0.1)  # the pending connection stays readable; do not spin on it
            return None
        sock.setblocking(False)  # reads take only what has arrived; see _send_now for sends
        reader = FrameReader(self.max_frame_bytes)
        return _Connection(sock, f"{host}:{port}", reader, time.monotonic())

    def _send_now(self, sock: socket.socket, message: dict) -> None:
        """Send MESSAGE whole, waiting at most send_timeout_s for the peer to take it."""
        sock.settimeout(self.send_timeout_s)
        try:
            send_message(sock, message)
        finally:
            with contextlib.suppress(OSError):
                sock.setblocking(False)

    def send(self, peer: _Connection, message: dict) -> None:
        try:
            self._send_now(peer.sock, message)
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
        with contextlib.suppress(OSError, ProtocolError):  # a courtesy: it may be gone
            self._send_now(connection.sock, {"type": "refused", "reason": reason})
        connection.sock.close()

    def _drop(self, connection: _Connection, reason: str) -> None:
        self.selector.unregister(connection.sock)
        self.waiting.remove(connection)
        self.say(f"dropped {connection.address}: {reason}")
        connection.sock.close()

    def _abort(self, reason: str) -> None:
        message = {"type": "refused", "reason": printable(f"run stopped: {reason}")}
        for peer in self.peers:
            with contextlib.suppress(OSError, ProtocolError):
                self._send_now(peer.sock, message)

    def _close(self) -> None:
        for connection in [*self.peers, *self.waiting]:
            connection.sock.close()
        self.selector.close()


class _Refusal(Exception):
    """A registration the server turns down, with the reason sent to that client."""
