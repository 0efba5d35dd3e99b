"""The server's side of a federated run: admit the clients, then round by round send the global
model, collect the clients' trained models, average them, and append the round to the chain.

One thread and a selector. Every connection is TLS 1.3 with a certificate made from the server's
key; a client proves its own key by signing a fresh challenge. The server only ever reads what has
already arrived (the handshake included) and lets the protocol assemble frames, so a peer that is
silent, slow or stuck half-way through a message holds up nobody, and every wait has a deadline.
"""

import contextlib
import math
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.checks import printable
from fedchain.learning.dataset import Dataset, column_difference
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.ledger.block import (
    MAX_REASON_CHARS,
    Block,
    ClientUpdate,
    RunRecord,
    TrainingSettings,
)
from fedchain.ledger.chain import Chain, make_closing_block, make_genesis, make_round_block
from fedchain.ledger.signatures import (
    attestation_message,
    signature_holds,
    update_message,
)
from fedchain.ledger.store import ChainWriter, block_to_json
from fedchain.ledger.verification import ChainError
from fedchain.trust.handshake import new_challenge, verify_login
from fedchain.trust.keys import public_hex
from fedchain.trust.tls import server_context
from fedchain.wire.frames import FrameReader, send_message
from fedchain.wire.messages import BUSY, ProtocolError

MAX_WAITING = 32  # newcomers not yet registered; past this, the least advanced one is shed
# A client's message takes a few hundred bytes a feature at most (a name in a registration, a
# weight in an update): once the run's features are known, a frame is held to that size, so
# half-sent frames cannot pin much memory.
FRAME_BASE_BYTES, FRAME_BYTES_PER_FEATURE = 8192, 300
MAX_NEWCOMER_BUFFER_BYTES = 64 << 20  # all newcomers' half-sent frames together


class RunAborted(RuntimeError):
    """The run cannot go on; the message names the client, or the stage, and why."""


class ChainUnavailable(RunAborted):
    """The chain file could not be made, so there is no chain of this run to show."""


@dataclass
class _Connection:
    """A peer's socket, the messages it has sent so far, and (once registered) who it is."""

    sock: ssl.SSLSocket  # non-blocking, but for the moments a message is sent
    address: str
    reader: FrameReader
    connected_at: float
    challenge: bytes = b""  # sent once the TLS handshake is done; empty until then
    name: str = ""
    public_key: str = ""
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
    # A round needs this many clients' updates; fewer, and the run stops. None: all of them.
    min_clients: int | None = None
    test_data: Dataset | None = None  # held-out rows each global model is scored on
    # The features a run expects, in the order its weights take. Empty: test_data's columns if
    # it is given, else the first client to join sets them.
    feature_names: tuple[str, ...] = ()
    # Who may join: name -> public key. None: open enrolment, where any key may join and each
    # name stays bound to the first key it joined with.
    authorized_keys: dict[str, str] | None = None

    def __init__(
        self,
        listener: socket.socket,
        chain_path: Path,
        say: Callable[[str], None],
        *,
        key: Ed25519PrivateKey,
    ) -> None:
        self.listener = listener
        self.chain_path = chain_path
        self.say = say
        self.key = key
        self.public_key = public_hex(key)
        self.tls = server_context(key)
        self.peers: list[_Connection] = []
        self.waiting: list[_Connection] = []
        self.run_features: tuple[str, ...] = ()  # fixed for the run once known
        self.bound_keys: dict[str, str] = {}  # open enrolment: each name's first key
        self.absent: dict[str, str] = {}  # clients left out of the run, and why
        self.waited_s = 0.0  # time spent waiting for peers, so a round's own time can be told
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, data=None)

    def run(self) -> list[Block]:
        """Admit the clients and run every round; return the chain. Raises RunAborted."""
        if self.min_clients is None:
            self.min_clients = self.n_clients
        try:
            self._admit()
            participants = {peer.name: peer.public_key for peer in self.peers}
            genesis = make_genesis(
                initial_model=LinearModel.zeros(len(self.run_features)),
                feature_names=self.run_features,
                difficulty=self.difficulty_bits,
                run=RunRecord(
                    self.rounds, self.seed, self.public_key, participants, self.min_clients
                ),
                server_key=self.key,
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
                self.send_to_all(welcome, index=1)
                self.say(
                    f"genesis block mined (hash {genesis.hash[:16]}…); {self.rounds} rounds to go"
                )
                for index in range(1, self.rounds + 1):
                    self._run_round(index, chain)
                self._close_run(chain)
            self.send_to_all({"type": "done", "blocks": len(chain.blocks)}, index=self.rounds + 1)
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
        started = time.monotonic()
        ready = [key.data for key, _ in self.selector.select(timeout)]
        self.waited_s += time.monotonic() - started  # idle: not the server's own time
        return ready

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> None:
        """Wait for n_clients to register; refuse (and keep waiting past) any bad newcomer."""
        if self.feature_names:
            self._fix_features(self.feature_names, "the server's setting")
        elif self.test_data is not None:
            self.feature_names = self.test_data.feature_names
            self._fix_features(self.feature_names, "the test data")
        if self.authorized_keys is None:
            self.say(
                "open enrolment: any key may join (--authorized-keys limits who may); "
                "each name stays bound to the key it first joins with"
            )

        def handle(connection: _Connection | None) -> None:
            if connection is None:
                self._accept_newcomer()
            elif not connection.challenge:
                self._shake_hands(connection)
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
        for connection in [*self.waiting, *self.peers]:
            connection.reader.max_frame_bytes = self._frame_limit()

    def _frame_limit(self) -> int:
        """The longest frame a client may send: sized from the run once its features are known."""
        if not self.run_features:
            return self.max_frame_bytes
        sized = FRAME_BASE_BYTES + FRAME_BYTES_PER_FEATURE * len(self.run_features)
        return min(self.max_frame_bytes, sized)

    def _accept_newcomer(self) -> None:
        connection = self._accept()
        if connection is None:
            return
        if len(self.waiting) >= MAX_WAITING:
            # Shed the newcomer that has come least far (no TLS handshake yet before one that
            # has), the oldest first: idle sockets held open to fill the queue make room for a
            # client that registers in milliseconds, instead of turning it away.
            shed = min(self.waiting, key=lambda c: (bool(c.challenge), c.connected_at))
            self._turn_away(shed, f"{BUSY} too many connections are waiting to register")
        self.waiting.append(connection)
        self.selector.register(connection.sock, selectors.EVENT_READ, data=connection)

    def _shake_hands(self, connection: _Connection) -> None:
        """Take the TLS handshake one step further; once done, send the login challenge."""
        try:
            connection.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return  # the peer's next flight has not arrived yet
        except (ssl.SSLError, OSError) as error:
            reason = getattr(error, "reason", None) or str(error) or type(error).__name__
            self._drop(connection, f"no TLS 1.3 handshake ({reason})")
            return
        connection.challenge = new_challenge()
        try:
            self._send_now(
                connection.sock, {"type": "challenge", "challenge": connection.challenge}
            )
        except OSError as error:
            self._drop(connection, f"it left during the login ({error})")
            return
        self._hear_newcomer(connection)  # the registration may already wait inside TLS

    def _hear_newcomer(self, connection: _Connection) -> None:
        try:
            messages = connection.reader.receive(connection.sock)
        except ProtocolError as error:
            self._turn_away(connection, str(error))
            return
        if messages is None:
            self._drop(connection, "it closed the connection before registering")
            return
        if sum(c.reader.buffered_bytes for c in self.waiting) > MAX_NEWCOMER_BUFFER_BYTES:
            hog = max(self.waiting, key=lambda c: c.reader.buffered_bytes)
            self._turn_away(hog, f"{BUSY} newcomers' unfinished messages fill the server's room")
            if hog is connection:
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
        key = message["public_key"]
        # The login signs this connection's challenge and this server's key: a recorded login
        # cannot be replayed here, nor one made for another server relayed to this one.
        if not verify_login(key, message["login_signature"], self.public_key,
                            connection.challenge, name):  # fmt: skip
            raise _Refusal(f"{name}'s login signature does not verify for key {key[:16]}…")
        if self.authorized_keys is not None:
            if name not in self.authorized_keys:
                raise _Refusal(f"{name!r} is not in the authorized keys")
            if self.authorized_keys[name] != key:
                raise _Refusal(
                    f"{name}'s key {key[:16]}… is not the one authorized for that name "
                    f"({self.authorized_keys[name][:16]}…)"
                )
        elif self.bound_keys.get(name, key) != key:
            raise _Refusal(
                f"{name!r} first joined with key {self.bound_keys[name][:16]}…, not {key[:16]}…"
            )
        if any(p.name == name for p in self.peers):
            raise _Refusal(f"a client named {name!r} has already joined")
        if any(p.public_key == key for p in self.peers):
            raise _Refusal(f"the key {key[:16]}… has already joined under another name")
        # Columns are matched by name: a client may hold them in any order.
        if self.run_features and (difference := column_difference(self.run_features, features)):
            raise _Refusal(f"{name}'s columns differ from the run's: {difference}")
        if not self.run_features:
            self._fix_features(features, name)
        self.bound_keys.setdefault(name, key)
        connection.name, connection.n_samples = name, message["n_samples"]
        connection.public_key = key

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
        started, waited_before = time.monotonic(), self.waited_s
        model = chain.last.server_model
        train = {
            "type": "train",
            "round": index,
            "weights": model.weights.copy(),
            "bias": model.bias,
        }
        self.send_to_all(train, index)
        received = self._collect(index, "update", chain, started + self.round_timeout_s)
        if len(received) < self.min_clients:
            reasons = "; ".join(f"{name} {why}" for name, why in self.absent.items())
            raise RunAborted(
                f"round {index} cannot go on with {len(received)} of the {self.min_clients} "
                f"clients it needs (--min-clients): {reasons}"
            )
        mining_started = time.monotonic()
        # The protocol caps every number at 1e100, so the weighted sum cannot overflow.
        block = make_round_block(
            chain.last,
            {p.name: received[p.name][0] for p in self.peers},
            attestations={p.name: received[p.name][1] for p in self.peers},
            server_key=self.key,
            missing=self.absent,
        )
        mining_s = time.monotonic() - mining_started
        self._append(chain, block)
        round_s = time.monotonic() - started
        # What the server itself spent on the round: checking, averaging, writing, sending.
        own_s = round_s - (self.waited_s - waited_before) - mining_s
        parts = [f"round {index}"]
        for peer in self.peers:
            metrics = received[peer.name][2]  # reported by the client; shown, never trusted
            parts.append(
                f"{peer.name} local MSE {metrics.get('local_mse', math.nan):.4g} "
                f"(trained in {1000 * metrics.get('train_s', math.nan):.1f} ms)"
            )
        if self.test_data:
            test_mse = mse(block.server_model, self.test_data.X, self.test_data.y)
            parts.append(f"global test MSE {test_mse:.4g}")
        parts.append(f"nonce {block.nonce} mined in {1000 * mining_s:.1f} ms")
        parts.append(f"round {1000 * round_s:.1f} ms (server's own {1000 * own_s:.1f} ms)")
        parts.append(f"hash {block.hash[:16]}…")
        self.say(" | ".join(parts))

    def _close_run(self, chain: Chain) -> None:
        """Collect every client's attestation of the last round and seal them in a closing
        block, so the last round, like every other, is checked by the clients."""
        index = self.rounds + 1
        self.send_to_all({"type": "close", "round": index}, index)
        deadline = time.monotonic() + self.round_timeout_s
        received = self._collect(index, "attest", chain, deadline)
        attestations = {name: attestation for name, (_, attestation, _) in received.items()}
        block = make_closing_block(
            chain.last, attestations=attestations, server_key=self.key, missing=self.absent
        )
        self._append(chain, block)
        self.say(f"closing block mined: {len(attestations)} clients attest the last round")

    def _append(self, chain: Chain, block: Block) -> None:
        """Verify and write BLOCK, then announce it to every client."""
        try:
            chain.append(block)
        except OSError as error:  # a full disk, say: every block before this one is safe
            raise RunAborted(f"cannot write block {block.index}: {error}") from None
        except ChainError as error:  # a bug of ours, never a peer's doing: say so and stop
            raise RunAborted(f"the server made a block that does not verify: {error}") from None
        self.send_to_all({"type": "block", "block": block_to_json(block)}, block.index + 1)

    def _collect(
        self, index: int, kind: str, chain: Chain, deadline: float
    ) -> dict[str, tuple[ClientUpdate | None, str, dict]]:
        """Each client's KIND message for round INDEX, checked: its update (None for an
        attestation alone), its attestation of the last block, and its metrics. A client that
        disconnects, sends something bad or nothing in time is left out of the run, its reason
        recorded in absent, and the others go on."""
        received: dict[str, tuple[ClientUpdate | None, str, dict]] = {}

        def handle(peer: _Connection | None) -> None:
            if peer is None:
                if connection := self._accept():
                    self._refuse_now(connection, "a run is in progress with all its clients")
                return
            if peer not in self.peers:
                return  # left out earlier in this same pass
            try:
                messages = peer.reader.receive(peer.sock)
            except ProtocolError as error:
                self._leave_out(peer, index, f"sent a bad frame: {error}")
                return
            if messages is None:
                self._leave_out(peer, index, "disconnected")  # noticed at once, not at the deadline
                return
            try:
                for message in messages:
                    if peer.name in received:
                        raise _Refusal(f"sent a second message in round {index}")
                    received[peer.name] = self._check_message(peer, message, kind, index, chain)
            except _Refusal as refusal:
                received.pop(peer.name, None)
                self._leave_out(peer, index, str(refusal))

        # Past the deadline, the last look reads what has already arrived, so a peer is never
        # blamed for time another peer's message took.
        every_peer = lambda: all(p.name in received for p in self.peers)  # noqa: E731
        if not self._serve_until(deadline, every_peer, handle):
            for peer in [p for p in self.peers if p.name not in received]:
                why = f"sent no {kind} within {self.round_timeout_s:g} s (--round-timeout-s)"
                self._leave_out(peer, index, why)
        # A client that left after its message arrived is out, with what it sent: the block
        # must never count a client it also records as missing.
        staying = {peer.name for peer in self.peers}
        return {name: parts for name, parts in received.items() if name in staying}

    def _leave_out(self, peer: _Connection, index: int, reason: str) -> None:
        """Take PEER out of the run for REASON, tell it why, and record it for every block."""
        self.absent[peer.name] = printable(f"{reason} (round {index})", limit=MAX_REASON_CHARS - 2)
        self.say(f"{peer.name} is left out of the run: {reason}")
        self.selector.unregister(peer.sock)
        self.peers.remove(peer)
        with contextlib.suppress(OSError, ProtocolError):
            self._send_now(peer.sock, {"type": "refused", "reason": f"left out: {reason}"})
        peer.sock.close()

    def _check_message(
        self, peer: _Connection, message: dict, kind: str, index: int, chain: Chain
    ) -> tuple[ClientUpdate | None, str, dict]:
        """The parts of a client's message, or _Refusal saying what is wrong with it."""
        if message["type"] != kind:
            raise _Refusal(f"sent {message['type']!r} instead of its {kind}")
        if message["round"] != index:
            raise _Refusal(f"sent round {message['round']}'s {kind} in round {index}")
        attestation = message["attestation"].hex()
        attested = attestation_message(genesis_hash=chain.genesis.hash, block=chain.last)
        if not signature_holds(peer.public_key, attestation, attested):
            raise _Refusal(f"sent an attestation of block {chain.last.index} that does not verify")
        if kind == "attest":
            return None, attestation, {}
        if message["n_samples"] != peer.n_samples:
            raise _Refusal(f"claims {message['n_samples']} rows, but registered {peer.n_samples}")
        if message["weights"].size != len(self.run_features):
            raise _Refusal(
                f"sent {message['weights'].size} weights for {len(self.run_features)} features"
            )
        update = ClientUpdate(
            LinearModel(message["weights"], message["bias"]),
            peer.n_samples,
            training=TrainingSettings(
                message["seed"], message["generations"], message["population"]
            ),
            signature=message["signature"].hex(),
        )
        signed = update_message(
            genesis_hash=chain.genesis.hash,
            index=index,
            previous_hash=chain.last.hash,
            name=peer.name,
            update=update,
        )
        if not signature_holds(peer.public_key, update.signature, signed):
            raise _Refusal(
                f"sent an update for round {index} not signed by its key "
                "(replayed from another round or chain, or forged)"
            )
        return update, attestation, message["metrics"]

    # --- plumbing ----------------------------------------------------------------------------

    def _accept(self) -> _Connection | None:
        try:
            sock, (host, port, *_) = self.listener.accept()
        except OSError as error:  # out of file descriptors, say: the others go on
            self.say(f"could not accept a connection: {error}")
            time.sleep(0.1)  # the pending connection stays readable; do not spin on it
            return None
        # Non-blocking, handshake included: reads take only what has arrived, so a peer that
        # never finishes its handshake or a frame holds up nobody (see _send_now for sends).
        sock.setblocking(False)
        # Every message leaves in one sendall. Without this, Nagle holds a round's "train" behind
        # the unacknowledged "block" just before it, until the client's delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            tls = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:  # reset before it was ever served: nothing to say to it
            self.say(f"dropped {host}:{port}: {error or type(error).__name__}")
            sock.close()
            return None
        reader = FrameReader(self._frame_limit())
        return _Connection(tls, f"{host}:{port}", reader, time.monotonic())

    def _send_now(self, sock: ssl.SSLSocket, message: dict) -> None:
        """Send MESSAGE whole, waiting at most send_timeout_s for the peer to take it."""
        sock.settimeout(self.send_timeout_s)
        try:
            send_message(sock, message)
        finally:
            with contextlib.suppress(OSError):
                sock.setblocking(False)

    def send_to_all(self, message: dict, index: int) -> None:
        """Send MESSAGE to every client in the run; one that cannot take it is left out."""
        for peer in list(self.peers):
            try:
                self._send_now(peer.sock, message)
            except OSError as error:
                self._leave_out(peer, index, f"disconnected ({error or type(error).__name__})")
            except ProtocolError as error:  # a message this server cannot put on the wire
                raise RunAborted(f"cannot send {message['type']!r}: {error}") from None

    def _turn_away(self, connection: _Connection, reason: str) -> None:
        self.selector.unregister(connection.sock)
        self.waiting.remove(connection)
        self._refuse(connection, reason)

    def _refuse(self, connection: _Connection, reason: str) -> None:
        reason = printable(reason)
        self.say(f"refused {connection.address}: {reason}")
        if connection.challenge:  # past the handshake, so the peer can read why
            with contextlib.suppress(OSError, ProtocolError):
                self._send_now(connection.sock, {"type": "refused", "reason": reason})
        connection.sock.close()

    def _refuse_now(self, connection: _Connection, reason: str) -> None:
        # A newcomer during a run: its handshake is not waited for; it is told by closing.
        self.say(f"refused {connection.address}: {reason}")
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
