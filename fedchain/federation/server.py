"""The server's transport: a listening socket, TLS 1.3, frames and one selector, driving the
run's protocol (protocol.py), which decides everything else.

One thread. Every connection is TLS 1.3 with a certificate made from the server's key; a client
proves its own key by signing a fresh challenge. The server only ever reads what has already
arrived (the handshake included) and lets the frame reader assemble messages, so a peer that is
silent, slow or stuck half-way through a message holds up nobody, and every wait has a deadline.
Newcomers are this file's until they have sent their registration: it sheds the least advanced
when too many wait, and turns away one that takes too long.
"""

import contextlib
import math
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.checks import printable
from fedchain.federation.events import (
    Abort,
    Action,
    BadFrame,
    Closed,
    Detail,
    Disconnect,
    Event,
    Registration,
    Report,
    Say,
    Send,
    SendFailed,
    Spoke,
    TurnAwayNewcomers,
    Write,
)
from fedchain.federation.metrics import MetricsFile
from fedchain.federation.plan import RunPlan
from fedchain.federation.protocol import ServerProtocol, Waits, check_arguments
from fedchain.federation.round_report import RoundReport
from fedchain.learning.dataset import Dataset
from fedchain.ledger.block import Block
from fedchain.ledger.chain import Chain
from fedchain.ledger.store import ChainWriter
from fedchain.trust.handshake import new_challenge
from fedchain.trust.tls import server_context
from fedchain.wire.frames import FrameReader, encode_message, send_message
from fedchain.wire.messages import BUSY, ProtocolError

MAX_WAITING = 32  # newcomers not yet registered; past this, the least advanced one is shed
# A client's message takes a few hundred bytes a feature at most (a name in a registration, a
# weight in an update): once the run's features are known, a frame is held to that size, so
# half-sent frames cannot pin much memory.
FRAME_BASE_BYTES, FRAME_BYTES_PER_FEATURE = 8192, 300
MAX_NEWCOMER_BUFFER_BYTES = 64 << 20  # all newcomers' half-sent frames together


# How a peer's closed connection shows when the server writes to it.
_CLOSED = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class RunAborted(RuntimeError):
    """The run cannot go on; the message names the client, or the stage, and why."""


class ChainUnavailable(RunAborted):
    """The chain file could not be made, so there is no chain of this run to show."""


@dataclass(eq=False)
class _Connection:
    """A peer's socket and the frames it has sent so far."""

    conn: int  # the protocol's name for it
    sock: ssl.SSLSocket  # non-blocking, but for the moments a message is sent
    address: str
    reader: FrameReader
    connected_at: float
    challenge: bytes = b""  # sent once the TLS handshake is done; empty until then


class FederationServer:
    """Runs one federation on a listening socket, to PLAN (a resumed run's: its genesis's).
    Operator settings that do not change what the chain means (waits, limits, where output goes)
    are plain attributes: set any of them before run(), as with the standard library's
    socketserver."""

    round_timeout_s: float = settings.ROUND_TIMEOUT_S
    join_timeout_s: float = settings.JOIN_TIMEOUT_S
    register_timeout_s: float = settings.REGISTER_TIMEOUT_S
    send_timeout_s: float = settings.SEND_TIMEOUT_S
    max_frame_bytes: int = settings.MAX_FRAME_BYTES
    # Below min_clients, how long a round waits for clients to come back before the run stops.
    rejoin_timeout_s: float = settings.REJOIN_TIMEOUT_S
    # Where each round's figures go, a row per client (None: nowhere).
    metrics: MetricsFile | None = None
    # The expected time to mine a block at the run's difficulty on this machine: a long one is
    # announced, to the log and to the clients, so a wait is never silent.
    mining_estimate_s: float = 0.0
    # Where the details go that only a person asking for them (-v) sees.
    detail: Callable[[str], None] = staticmethod(lambda line: None)

    def __init__(
        self,
        listener: socket.socket,
        chain_path: Path,
        say: Callable[[str], None],
        *,
        key: Ed25519PrivateKey,
        plan: RunPlan,
        resumed: Chain | None = None,
        test_data: Dataset | None = None,
    ) -> None:
        """RESUMED: a verified chain (open for appending) to go on from, instead of starting a
        new run; PLAN must be its genesis's. TEST_DATA: held-out rows each global model is scored
        on, in the order of PLAN's features (which they fix, if known)."""
        check_arguments(plan, key, resumed, test_data)
        self.listener = listener
        self.chain_path = chain_path
        self.say = say
        self.key = key
        self.plan = plan
        self.resumed = resumed
        self.test_data = test_data
        self.tls = server_context(key)
        self.protocol: ServerProtocol | None = None  # made by run(), with the waits set by then
        self.writer: ChainWriter | None = None
        self.connections: dict[int, _Connection] = {}  # every open one, by the protocol's name
        self.waiting: list[_Connection] = []  # newcomers not yet registered
        self.next_conn = 0
        self.frame_features = -1  # the run's features the frame limit was last sized for
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, data=None)

    def run(self) -> list[Block]:
        """Admit the clients (or resume) and run every round; return the chain. Raises
        RunAborted."""
        if self.resumed is not None:  # the protocol holds the chain, this file its file
            self.writer, self.resumed.store = self.resumed.store, None
        waits = Waits(
            round_timeout_s=self.round_timeout_s,
            join_timeout_s=self.join_timeout_s,
            rejoin_timeout_s=self.rejoin_timeout_s,
            mining_estimate_s=self.mining_estimate_s,
        )
        self.protocol = protocol = ServerProtocol(
            self.plan,
            self.key,
            time,
            waits=waits,
            resumed=self.resumed,
            test_data=self.test_data,
            chain_name=str(self.chain_path),
        )
        try:
            self._carry_out(protocol.start())
            while not protocol.finished:
                self._serve_once()
            return protocol.chain.blocks
        except RunAborted as error:
            self._abort(str(error))
            raise
        finally:
            self._close()

    def _serve_once(self) -> None:
        """Hand the protocol what arrives before it next has something to decide, then let it
        decide."""
        wake = min(self.protocol.wake_at(), self._next_expiry())
        self._serve(self._ready(wake))
        # The last look: what has already arrived counts in the decision, so a peer is never
        # blamed for time another peer's message took, and one that left at the last moment is
        # not counted. One pass only, so new arrivals cannot put the decision off.
        self._serve(self._ready(0.0))
        self._expire_newcomers()
        self._carry_out(self.protocol.tick())

    def _serve(self, ready: list[_Connection | None]) -> None:
        for connection in ready:
            if connection is None:
                self._accept_newcomer()
            # One handled earlier in this batch may have closed it (a newcomer shed to make
            # room, a connection replaced by its client's new login): nothing is left to read.
            elif connection.sock.fileno() < 0:
                continue
            elif not connection.challenge:
                self._shake_hands(connection)
            elif connection in self.waiting:
                self._hear_newcomer(connection)
            else:
                self._hear_member(connection)

    def _ready(self, wake_at: float) -> list[_Connection | None]:
        timeout = max(0.0, wake_at - time.monotonic())
        return [key.data for key, _ in self.selector.select(timeout)]

    # --- carrying out the protocol's actions ----------------------------------------------

    def _tell(self, event: Event) -> None:
        self._carry_out(self.protocol.handle(event))

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(to, message):
                    self._send_to(to, message)
                case Disconnect(conn, refusal):
                    if (connection := self.connections.get(conn)) is not None:
                        self._hang_up(connection, refusal)
                case TurnAwayNewcomers(reason):
                    for connection in list(self.waiting):
                        self._turn_away(connection, reason)
                case Say(text):
                    self.say(text)
                case Detail(text):
                    self.detail(text)
                case Write(block):
                    self._write(block)
                case Report(report):
                    self._report(report)
                case Abort(reason):
                    raise RunAborted(reason)
        self._size_frames()

    def _send_to(self, to: tuple[int, ...], message: dict) -> None:
        """Send MESSAGE to each of TO; one that cannot take it is the protocol's to judge."""
        try:
            frame = encode_message(message)  # once: a block goes to every client alike
        except ProtocolError as error:  # a message this server cannot put on the wire
            raise RunAborted(f"cannot send {message['type']!r}: {error}") from None
        for conn in to:
            connection = self.connections.get(conn)
            if connection is None:  # left out while this message was on its way
                continue
            try:
                self._send_now(connection.sock, frame)
            except _CLOSED:  # the peer has gone: what a read would have found
                self._tell(Closed(conn))
            except OSError as error:
                self._tell(SendFailed(conn, self._in_words(error)))

    def _write(self, block: Block) -> None:
        if self.writer is None:  # the genesis: the file is made only now
            try:
                self.writer = ChainWriter(self.chain_path)
            except OSError as error:
                raise ChainUnavailable(
                    f"cannot make the chain file {self.chain_path}: {error}"
                ) from None
        try:
            self.writer.append(block)
        except OSError as error:  # a full disk, say: every block before this one is safe
            raise RunAborted(f"cannot write block {block.index}: {error}") from None

    def _report(self, report: RoundReport) -> None:
        rows, lines = report.finish(time.monotonic(), time.process_time())
        if self.metrics is not None:
            try:
                self.metrics.add_round(rows)
            except OSError as error:  # the chain is what matters: say so and go on
                self.say(f"could not write the metrics of round {report.block.index}: {error}")
        for line in lines:
            self.say(line)

    # --- newcomers -------------------------------------------------------------------------

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
        self.connections[connection.conn] = connection
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
        challenge = {"type": "challenge", "challenge": connection.challenge}
        if self.plan.schema is not None:  # a private client clips to it before it registers
            challenge["schema"] = self.plan.schema.canonical()
        try:
            self._send_now(connection.sock, challenge)
        except OSError as error:
            self._drop(connection, f"it left during the login ({self._in_words(error)})")
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
        if not messages:
            return  # part of a frame; the rest may follow
        self.waiting.remove(connection)
        registration = Registration(
            connection.conn, connection.address, connection.challenge, tuple(messages)
        )
        self._tell(registration)

    def _hear_member(self, connection: _Connection) -> None:
        try:
            messages = connection.reader.receive(connection.sock)
        except ProtocolError as error:
            self._tell(BadFrame(connection.conn, str(error)))
            return
        if messages is None:
            self._tell(Closed(connection.conn))
        else:
            self._tell(Spoke(connection.conn, tuple(messages)))

    def _next_expiry(self) -> float:
        return min(
            (c.connected_at + self.register_timeout_s for c in self.waiting), default=math.inf
        )

    def _expire_newcomers(self) -> None:
        now = time.monotonic()
        for connection in list(self.waiting):
            if now - connection.connected_at >= self.register_timeout_s:
                self._turn_away(
                    connection,
                    f"no registration within {self.register_timeout_s:g} s (--register-timeout-s)",
                )

    def _size_frames(self) -> None:
        """Hold every connection's frames to the run's size, once its features are known."""
        features = len(self.protocol.run_features)
        if features != self.frame_features:
            self.frame_features = features
            for connection in self.connections.values():
                connection.reader.max_frame_bytes = self._frame_limit()

    def _frame_limit(self) -> int:
        """The longest frame a client may send: sized from the run once its features are known."""
        if self.protocol is None or not self.protocol.run_features:
            return self.max_frame_bytes
        sized = FRAME_BASE_BYTES + FRAME_BYTES_PER_FEATURE * len(self.protocol.run_features)
        return min(self.max_frame_bytes, sized)

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
        self.next_conn += 1
        reader = FrameReader(self._frame_limit())
        return _Connection(self.next_conn, tls, f"{host}:{port}", reader, time.monotonic())

    def _send_now(self, sock: ssl.SSLSocket, message: dict | bytes) -> None:
        """Send MESSAGE (or an encoded frame) whole, waiting at most send_timeout_s for the
        peer to take it."""
        sock.settimeout(self.send_timeout_s)
        try:
            send_message(sock, message)
        finally:
            with contextlib.suppress(OSError):
                sock.setblocking(False)

    def _in_words(self, error: OSError) -> str:
        """What went wrong with a connection, as a person would say it (not the TLS library's
        "EOF occurred in violation of protocol (_ssl.c:2427)")."""
        if isinstance(error, _CLOSED):
            return "the connection closed"
        if isinstance(error, TimeoutError):
            return f"it took nothing sent to it for {self.send_timeout_s:g} s"
        return error.strerror or str(error) or type(error).__name__

    def _turn_away(self, connection: _Connection, reason: str) -> None:
        reason = printable(reason)
        self.say(f"refused {connection.address}: {reason}")
        self._hang_up(connection, reason)

    def _drop(self, connection: _Connection, reason: str) -> None:
        self.say(f"dropped {connection.address}: {reason}")
        self._hang_up(connection, None)

    def _hang_up(self, connection: _Connection, refusal: str | None) -> None:
        """Close CONNECTION, first telling it REFUSAL if there is one and it can read it."""
        self.selector.unregister(connection.sock)
        del self.connections[connection.conn]
        if connection in self.waiting:
            self.waiting.remove(connection)
        if refusal is not None and connection.challenge:  # past the handshake: it can read why
            with contextlib.suppress(OSError, ProtocolError):
                self._send_now(connection.sock, {"type": "refused", "reason": refusal})
        connection.sock.close()

    def _abort(self, reason: str) -> None:
        message = {"type": "refused", "reason": printable(f"run stopped: {reason}")}
        members = [] if self.protocol is None else self.protocol.members
        for member in members:
            if (connection := self.connections.get(member.conn)) is not None:
                with contextlib.suppress(OSError, ProtocolError):
                    self._send_now(connection.sock, message)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # also when the run stopped before its rounds began
        for connection in self.connections.values():
            connection.sock.close()
        self.selector.close()
