"""The server's side of a federated run: admit the clients, then round by round send the global
model, collect the clients' trained models, average them, and append the round to the chain.

One thread and a selector. Every connection is TLS 1.3 with a certificate made from the server's
key; a client proves its own key by signing a fresh challenge. The server only ever reads what has
already arrived (the handshake included) and lets the protocol assemble frames, so a peer that is
silent, slow or stuck half-way through a message holds up nobody, and every wait has a deadline.

Clients come and go: one that drops out is left out of the round (the block records why), and
one that logs in again with its key while the run goes on gets the blocks it missed and takes part
from the next round. A run below its quorum waits a bounded time for clients to come back. A
server restarted on its chain file (resumed) goes on from the chain's last block the same way.
"""

import contextlib
import math
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.checks import printable
from fedchain.federation.metrics import MetricsFile
from fedchain.federation.plan import RunPlan
from fedchain.learning.aggregation import RULES, Rule, feature_scale
from fedchain.learning.dataset import Dataset, column_difference
from fedchain.learning.linear_model import LinearModel, mse, r2
from fedchain.ledger.block import (
    MAX_REASON_CHARS,
    Block,
    ClientUpdate,
    PrivacyStatement,
    PrivacyTerms,
    RunRecord,
    TrainingSettings,
)
from fedchain.ledger.chain import Chain, make_closing_block, make_genesis, make_round_block
from fedchain.ledger.correction import probe_point
from fedchain.ledger.report import describe_choice
from fedchain.ledger.signatures import (
    attestation_message,
    probe_message,
    signature_holds,
    update_message,
)
from fedchain.ledger.store import ChainWriter, block_to_json, updates_to_json
from fedchain.ledger.verification import ChainError, schema_fault, statement_fault
from fedchain.trust.handshake import new_challenge, verify_login
from fedchain.trust.keys import public_hex
from fedchain.trust.tls import server_context
from fedchain.wire.frames import FrameReader, encode_message, send_message
from fedchain.wire.messages import BUSY, MAX_PROBES, ProtocolError

MAX_WAITING = 32  # newcomers not yet registered; past this, the least advanced one is shed
# A client's message takes a few hundred bytes a feature at most (a name in a registration, a
# weight in an update): once the run's features are known, a frame is held to that size, so
# half-sent frames cannot pin much memory.
FRAME_BASE_BYTES, FRAME_BYTES_PER_FEATURE = 8192, 300
MAX_NEWCOMER_BUFFER_BYTES = 64 << 20  # all newcomers' half-sent frames together
STATUS_EVERY_S = 5.0  # how often a wait for clients says what it waits for
RESUME_GRACE_S = 10.0  # once a resumed run has its quorum back, how long the rest may take


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
    privacy: PrivacyStatement | None = None  # a private client's signed statement
    inbox: list[dict] = field(default_factory=list)


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
        if plan.server_key != public_hex(key):
            raise ValueError("the plan's server key is not KEY's")
        if resumed is not None and plan != RunPlan.from_genesis(resumed.genesis):
            raise ValueError("a resumed run's plan must be the one its genesis records")
        if test_data is not None and plan.features not in (None, test_data.feature_names):
            raise ValueError("the test data's columns must be the plan's, in its order")
        self.listener = listener
        self.chain_path = chain_path
        self.say = say
        self.key = key
        self.public_key = public_hex(key)
        self.plan = plan
        self.resumed = resumed
        self.test_data = test_data
        self.tls = server_context(key)
        self.peers: list[_Connection] = []  # the clients taking part in the round
        self.waiting: list[_Connection] = []  # newcomers not yet registered
        self.standby: list[_Connection] = []  # back mid-run, caught up; in from the next round
        self.chain: Chain | None = None  # once the run has begun
        # The round's checked messages so far, by client: its update (None for a closing
        # attestation), its attestation of the last block, and its reported metrics.
        self.received: dict[str, tuple[ClientUpdate | None, str, dict]] = {}
        self.candidate: LinearModel | None = None  # scaffold: what the round's probe asks at
        self.probed: list[dict[str, ClientUpdate]] = []  # what each of the round's probes showed
        self.round_index = 0  # the block being gathered, for the reasons recorded in it
        self.run_features: tuple[str, ...] = ()  # fixed for the run once known
        self.bound_keys: dict[str, str] = {}  # open enrolment: each name's first key
        self.absent: dict[str, str] = {}  # clients left out of the run, and why
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, data=None)

    def run(self) -> list[Block]:
        """Admit the clients (or resume) and run every round; return the chain. Raises
        RunAborted."""
        try:
            chain = self._begin() if self.resumed is None else self._resume(self.resumed)
            with chain.store:
                for index in range(chain.last.index + 1, self.plan.rounds + 1):
                    self._run_round(index, chain)
                self._close_run(chain)
            done = {"type": "done", "blocks": len(chain.blocks)}
            self._send_to(self.peers + self.standby, done, index=self.plan.rounds + 1)
            return chain.blocks
        except RunAborted as error:
            self._abort(str(error))
            raise
        finally:
            self._close()

    def _begin(self) -> Chain:
        """Admit the clients, then mine the genesis, make the chain file and welcome them."""
        self._admit()
        participants = {peer.name: peer.public_key for peer in self.peers}
        self._announce_mining(0)
        genesis = make_genesis(
            initial_model=LinearModel.zeros(len(self.run_features)),
            feature_names=self.run_features,
            difficulty=self.plan.difficulty_bits,
            run=RunRecord(
                self.plan.rounds,
                self.plan.seed,
                self.public_key,
                participants,
                self.plan.min_clients,
                self._privacy_terms(),
            ),
            server_key=self.key,
            aggregation=self.plan.aggregation,
            parameters=self.plan.aggregation_parameters,
            scale=self._krum_scale(),
        )
        # The file is made only now, so a run that never starts leaves nothing in the way.
        try:
            writer = ChainWriter(self.chain_path)
        except OSError as error:
            raise ChainUnavailable(
                f"cannot make the chain file {self.chain_path}: {error}"
            ) from None
        try:
            self.chain = Chain(genesis, store=writer)
        except OSError as error:  # a full disk, say
            writer.close()
            raise RunAborted(f"cannot write block 0: {error}") from None
        self.round_index = 1
        for peer in list(self.peers):
            self._welcome(peer)
        self.say(
            f"genesis block mined (hash {genesis.hash[:16]}…); {self.plan.rounds} rounds to go"
        )
        return self.chain

    @property
    def rule(self) -> Rule:
        """The run's aggregation rule."""
        return RULES[self.plan.aggregation]

    def _privacy_terms(self) -> PrivacyTerms | None:
        """What the genesis of a run with a schema records: the bounds, the limit, and each
        private client's statement."""
        if self.plan.schema is None:
            return None
        statements = {p.name: p.privacy for p in self.peers if p.privacy is not None}
        return PrivacyTerms(self.plan.schema.canonical(), self.plan.max_epsilon, statements)

    def _krum_scale(self) -> tuple[float, ...] | None:
        """For Krum, each feature's root mean square on the held-out rows, which the genesis
        records and Krum multiplies each weight by before it measures a distance (so a
        distance is a change of prediction); None, raw weight units, without held-out rows."""
        if not self.rule.scaled:
            return None
        if self.test_data is None:
            self.say(
                "krum measures distances in raw weight units: there are no held-out rows "
                "(--test) to scale the features by"
            )
            return None
        rows = self.test_data.in_order(self.run_features)
        self.detail(
            f"krum measures distances with each weight times its feature's root mean "
            f"square on the {rows.n_samples} held-out rows"
        )
        return feature_scale(rows.X)

    def _resume(self, chain: Chain) -> Chain:
        """Take the run's clients from CHAIN's genesis (whose plan is the server's) and wait for
        them to come back: all of them, or the quorum and whoever follows within a grace period."""
        run = chain.genesis.run
        self.chain = chain
        self._fix_features(self.plan.features, "the chain's genesis")
        self.round_index = chain.last.index + 1
        self.absent = {name: "not back since the server restarted" for name in run.participants}
        self.say(
            f"resuming the run of {chain.store.path} after block {chain.last.index} "
            f"({chain.rounds_done} of {self.plan.rounds} rounds done); waiting for its "
            f"{self.plan.n_clients} clients to come back"
        )
        quorum_at = math.inf  # when the quorum was back

        def finished() -> bool:
            nonlocal quorum_at
            back = len(self.standby)
            if back < self.plan.min_clients:
                quorum_at = math.inf  # one left again: the quorum is not back after all
            elif quorum_at == math.inf:
                quorum_at = time.monotonic()
            return back == self.plan.n_clients or time.monotonic() >= quorum_at + RESUME_GRACE_S

        def status() -> str:
            return f"{len(self.standby)} of {self.plan.n_clients} clients are back"

        deadline = time.monotonic() + self.rejoin_timeout_s
        if not self._wait_for_clients(
            deadline, finished, status, lambda: quorum_at + RESUME_GRACE_S
        ):
            raise RunAborted(
                f"only {len(self.standby)} of the {self.plan.min_clients} clients the run needs "
                f"(its min_clients) came back within {self.rejoin_timeout_s:g} s "
                "(--rejoin-timeout-s)"
            )
        return chain

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
            wake = time.monotonic() if settled else min(deadline, wake_at(), self._next_expiry())
            for connection in self._ready(wake):
                # One handled earlier in this batch may have closed it (a newcomer shed to make
                # room, a connection replaced by its client's new login): nothing is left to
                # read, and its socket is no longer the selector's to unregister.
                if connection is None or connection.sock.fileno() >= 0:
                    handle(connection)
            self._expire_newcomers()

    def _next_expiry(self) -> float:
        return min(
            (c.connected_at + self.register_timeout_s for c in self.waiting), default=math.inf
        )

    def _handle(
        self, connection: _Connection | None, hear_peer: Callable[[_Connection], None]
    ) -> None:
        """Serve CONNECTION (None: the listener); a client in the round is HEAR_PEER's."""
        if connection is None:
            self._accept_newcomer()
        elif not connection.challenge:
            self._shake_hands(connection)
        elif connection in self.waiting:
            self._hear_newcomer(connection)
        elif connection in self.standby:
            self._hear_idle(connection)
        elif connection in self.peers:
            hear_peer(connection)

    def _wait_for_clients(
        self,
        deadline: float,
        finished: Callable[[], bool],
        status: Callable[[], str],
        wake_at: Callable[[], float] = lambda: math.inf,
        hear_peer: Callable[[_Connection], None] | None = None,
        flag: str = "--rejoin-timeout-s",
        tell_clients: bool = True,
    ) -> bool:
        """Serve until FINISHED() or DEADLINE, saying STATUS() and how long it may take (FLAG
        sets it) every few seconds, to the log and (if TELL_CLIENTS) to the clients in the run;
        return FINISHED()."""
        next_status = time.monotonic()

        def tell() -> float:
            nonlocal next_status
            now = time.monotonic()
            if now >= next_status and not finished():
                left = max(0.0, deadline - now)
                text = printable(f"waiting: {status()}; up to {left:.0f} s more ({flag})")
                self.say(text)
                if tell_clients:
                    self._send_to(
                        self.peers + self.standby,
                        {"type": "waiting", "reason": text},
                        index=self.round_index,
                    )
                next_status = now + STATUS_EVERY_S
            return min(next_status, wake_at())

        hear = hear_peer or self._hear_idle
        return self._serve_until(deadline, finished, lambda c: self._handle(c, hear), tell)

    def _ready(self, wake_at: float) -> list[_Connection | None]:
        timeout = max(0.0, wake_at - time.monotonic())
        return [key.data for key, _ in self.selector.select(timeout)]

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> None:
        """Wait for n_clients to register; refuse (and keep waiting past) any bad newcomer."""
        if self.plan.features is not None:
            self._fix_features(self.plan.features, "the test data")
        if self.plan.authorized_keys is None:
            self.say(
                "open enrolment: any key may join (--authorized-keys limits who may); "
                "each name stays bound to the key it first joins with"
            )

        deadline = time.monotonic() + self.join_timeout_s

        def status() -> str:
            joined = ", ".join(p.name for p in self.peers[:8]) + (
                ", …" if len(self.peers) > 8 else ""
            )
            return (
                f"for {self.plan.n_clients} clients to join ({len(self.peers)} joined"
                f"{': ' + joined if joined else ''})"
            )

        everyone = lambda: len(self.peers) == self.plan.n_clients  # noqa: E731
        # The clients that have joined are told nothing until the run begins: they wait quietly.
        if not self._wait_for_clients(
            deadline,
            everyone,
            status,
            hear_peer=self._hear_early_peer,
            flag="--join-timeout-s",
            tell_clients=False,
        ):
            raise RunAborted(
                f"only {len(self.peers)} of {self.plan.n_clients} clients joined within "
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
        challenge = {"type": "challenge", "challenge": connection.challenge}
        if self.plan.schema is not None:  # a private client clips to it before it registers
            challenge["schema"] = self.plan.schema.canonical()
        try:
            self._send_now(connection.sock, challenge)
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
        if self.chain is not None:
            self._welcome_back(connection)
            return
        self.peers.append(connection)
        self.say(
            f"{connection.name} joined from {connection.address} with {connection.n_samples} "
            f"rows ({len(self.peers)} of {self.plan.n_clients})"
        )

    def _check_registration(self, connection: _Connection) -> None:
        message = connection.inbox.pop(0)
        if message["type"] != "register":
            raise _Refusal(f"expected a register message first, not {message['type']!r}")
        if connection.inbox:
            raise _Refusal("sent more than its registration before it was welcomed")
        name, features = message["name"], tuple(message["feature_names"])
        key = message["public_key"]
        if self.chain is None and len(self.peers) >= self.plan.n_clients:
            raise _Refusal(self._full())
        # The login signs this connection's challenge and this server's key: a recorded login
        # cannot be replayed here, nor one made for another server relayed to this one.
        if not verify_login(
            key, message["login_signature"], self.public_key, connection.challenge, name
        ):
            raise _Refusal(f"{name}'s login signature does not verify for key {key[:16]}…")
        if self.chain is None:
            self._check_newcomer(name, key)
        else:
            self._check_returning(name, key, message["n_samples"])
        privacy = self._check_privacy(name, key, features, message.get("privacy"))
        # Columns are matched by name: a client may hold them in any order.
        if self.run_features and (difference := column_difference(self.run_features, features)):
            raise _Refusal(f"{name}'s columns differ from the run's: {difference}")
        if not self.run_features:
            self._fix_features(features, name)
        self.bound_keys.setdefault(name, key)
        connection.name, connection.n_samples = name, message["n_samples"]
        connection.public_key, connection.privacy = key, privacy

    def _check_privacy(
        self, name: str, key: str, features: tuple[str, ...], offered: dict | None
    ) -> PrivacyStatement | None:
        """NAME's privacy statement, if this run has a schema: refused if the run's limit or
        the genesis (for a client coming back) says otherwise, or if its signature fails."""
        if self.plan.schema is None:
            if offered is not None:
                raise _Refusal(
                    f"{name} states a privacy guarantee, but this run has no schema "
                    "(--schema) to clip to"
                )
            return None
        if fault := schema_fault(self.plan.schema, features):
            raise _Refusal(f"{name}'s columns do not fit the run's schema: the {fault}")
        statement = (
            None
            if offered is None
            else PrivacyStatement(
                offered["mechanism"],
                offered["epsilon"],
                offered["delta"],
                offered["signature"].hex(),
            )
        )
        if self.chain is not None:
            recorded = self.chain.genesis.run.privacy.statements.get(name)
            if statement != recorded:
                raise _Refusal(
                    f"{name}'s privacy statement is not the one this run's genesis "
                    "records (a private client reuses its one release)"
                )
            return statement
        fault = statement_fault(
            name,
            statement,
            participant_key=key,
            server_key=self.public_key,
            schema_digest=self.plan.schema.digest(),
            max_epsilon=self.plan.max_epsilon,
        )
        if fault:
            raise _Refusal(fault)
        return statement

    def _check_newcomer(self, name: str, key: str) -> None:
        """Before the run: may NAME join with KEY?"""
        if self.plan.authorized_keys is not None:
            if name not in self.plan.authorized_keys:
                raise _Refusal(f"{name!r} is not in the authorized keys")
            if self.plan.authorized_keys[name] != key:
                raise _Refusal(
                    f"{name}'s key {key[:16]}… is not the one authorized for that name "
                    f"({self.plan.authorized_keys[name][:16]}…)"
                )
        elif self.bound_keys.get(name, key) != key:
            raise _Refusal(
                f"{name!r} first joined with key {self.bound_keys[name][:16]}…, not {key[:16]}…"
            )
        if any(p.name == name for p in self.peers):
            raise _Refusal(f"a client named {name!r} has already joined")
        if any(p.public_key == key for p in self.peers):
            raise _Refusal(f"the key {key[:16]}… has already joined under another name")

    def _check_returning(self, name: str, key: str, n_samples: int) -> None:
        """During the run: is this a client the genesis admitted, with its key and its rows? A
        connection of its still open is closed: a client that logs in again has restarted."""
        participants = self.chain.genesis.run.participants
        if name not in participants:
            raise _Refusal(
                f"{name!r} is not a client of this run (its genesis admits only "
                f"{', '.join(sorted(participants))})"
            )
        if participants[name] != key:
            raise _Refusal(
                f"{name}'s key {key[:16]}… is not the one this run admitted "
                f"({participants[name][:16]}…)"
            )
        recorded = self.chain.sample_counts.get(name)
        if recorded is not None and recorded != n_samples:
            # The count weighs the client's model in every average: it is fixed for the run.
            raise _Refusal(f"{name} now has {n_samples} rows, but the chain records {recorded}")
        for old in [c for c in self.peers + self.standby if c.name == name]:
            self._leave_out(old, self.round_index, "logged in again on a new connection")

    def _hear_early_peer(self, peer: _Connection) -> None:
        # A client that has joined has nothing to say until the first round: if its socket
        # stirs, it has left (and its name is free again, for a restart) or broken the protocol.
        still_there = _spoke(peer)
        self.selector.unregister(peer.sock)
        self.peers.remove(peer)
        if not self.peers:
            # Unless the plan fixes them, the first client to come sets them afresh.
            self.run_features = self.plan.features or ()
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
        n = self.plan.n_clients
        return f"the run is full ({n} client{'s' if n != 1 else ''})"

    # --- clients coming back -------------------------------------------------------------------

    def _welcome(self, connection: _Connection) -> bool:
        """Send the genesis and every block after it, so CONNECTION holds the chain so far;
        False if it could not take them (it is then left out)."""
        chain = self.chain
        welcome = {
            "type": "welcome",
            "genesis": block_to_json(chain.genesis),
            "seed": self.plan.seed,
            "rounds": self.plan.rounds,
            "height": len(chain.blocks),
        }
        try:
            self._send_now(connection.sock, welcome)
            for block in chain.blocks[1:]:
                self._send_now(connection.sock, {"type": "block", "block": block_to_json(block)})
        except OSError as error:
            self._leave_out(connection, self.round_index, f"disconnected ({error})")
            return False
        return True

    def _welcome_back(self, connection: _Connection) -> None:
        """A client of this run has logged in again: catch it up; it takes part from the next
        round (or at once, if the round in progress is short of its quorum)."""
        self.standby.append(connection)
        if not self._welcome(connection):
            return
        index = self.round_index
        if index > self.plan.rounds:  # the closing block is being gathered: no round is left
            self.absent[connection.name] = "came back as the run was closing"
            when = "the run is closing: it gets the closing block"
        else:
            self.absent[connection.name] = (
                f"came back during round {index}; in from round {index + 1}"
            )
            when = "it takes part from the next round (from this one, if it is short)"
        self.say(
            f"{connection.name} is back from {connection.address}: sent it the "
            f"{len(self.chain.blocks)} blocks so far; {when}"
        )

    def _bring_in_standby(self) -> list[_Connection]:
        """Move the clients that came back into the round; return them."""
        back, self.standby = self.standby, []
        for connection in back:
            self.peers.append(connection)
            self.absent.pop(connection.name, None)
        self.peers.sort(key=lambda p: p.name)  # the order every round hashes and averages in
        return back

    def _hear_idle(self, connection: _Connection) -> None:
        """A client with nothing to say (between its messages, or back and waiting for its
        round) whose socket stirs: it has left, or broken the protocol. Either way it is out."""
        back = any(connection is c for c in self.standby)
        gone = "disconnected again" if back else "disconnected"
        spoke = _spoke(connection)
        self._leave_out(connection, self.round_index, "spoke out of turn" if spoke else gone)

    # --- rounds ------------------------------------------------------------------------------

    def _run_round(self, index: int, chain: Chain) -> None:
        started, cpu_started = time.monotonic(), time.process_time()
        self.round_index = index
        model = chain.last.server_model
        train = {
            "type": "train",
            "round": index,
            "weights": model.weights.copy(),
            "bias": model.bias,
        }
        # The round's updates so far: a client that leaves, or logs in again, takes its own out.
        received = self.received = {}
        self.probed = []
        trained: list[_Connection] = []  # the connections sent this round's model
        rejoin_deadline = math.inf  # set when the round first falls short of its quorum
        waiting_s = 0.0  # spent waiting for clients to come back, not counted in the round
        while True:
            # Those back before the round join it; those back during it, only if it is short of
            # its quorum. Not on a probe asked again: a client could log in again at every
            # probe, be trained afresh each time, and hold the round forever.
            if not trained or len(self.peers) < self.plan.min_clients:
                self._bring_in_standby()
            if len(self.peers) >= self.plan.min_clients:
                fresh = [p for p in self.peers if not any(p is t for t in trained)]
                self._send_to(fresh, train, index)
                trained += fresh
                deadline = time.monotonic() + self.round_timeout_s
                self._collect(index, "update", chain, deadline, received)
                # Scaffold asks the round's clients for their gradients at the candidate their
                # models make; one that leaves meanwhile changes it, and the round goes on
                # with the others (or waits for its quorum) and asks again.
                if len(received) >= self.plan.min_clients and (
                    not self.rule.probes or self._probe(index, chain, received)
                ):
                    break
            if rejoin_deadline == math.inf:
                rejoin_deadline = time.monotonic() + self.rejoin_timeout_s
            elif time.monotonic() >= rejoin_deadline:
                # The bound is on the round's whole wait: a needed client that leaves and comes
                # back at once (logging in again, say), over and over, never leaves the round
                # short for long, but must not hold it for ever.
                raise RunAborted(
                    f"round {index} kept losing clients it needs (--min-clients) for more than "
                    f"{self.rejoin_timeout_s:g} s (--rejoin-timeout-s)"
                )
            waited = time.monotonic()
            self._await_quorum(index, received, rejoin_deadline)
            waiting_s += time.monotonic() - waited
        mining_started, mining_cpu_started = time.monotonic(), time.process_time()
        # The protocol caps every number at 1e100, so the weighted sum cannot overflow.
        contributors = [p for p in self.peers if p.name in received]
        self._announce_mining(index)
        try:
            block = make_round_block(
                chain.last,
                {p.name: received[p.name][0] for p in contributors},
                attestations={p.name: received[p.name][1] for p in contributors},
                server_key=self.key,
                missing=self._missing(),
            )
        except ValueError as error:  # the quorum the genesis checked makes this a bug of ours
            raise RunAborted(f"round {index} cannot be aggregated: {error}") from None
        mining_s = time.monotonic() - mining_started
        mining_cpu_s = time.process_time() - mining_cpu_started
        self._append(chain, block)
        round_s = time.monotonic() - started - waiting_s
        # What the server itself spent on the round, on a core: checking, averaging, writing,
        # sending. CPU time, so neither waiting for peers nor for a busy core counts, nor mining.
        own_s = time.process_time() - cpu_started - mining_cpu_s
        test_mse = test_r2 = math.nan
        if self.test_data:
            test_mse = mse(block.server_model, self.test_data.X, self.test_data.y)
            test_r2 = r2(block.server_model, self.test_data.X, self.test_data.y)
        if self.metrics is not None:
            shared = {
                "round": index,
                "test_mse": test_mse,
                "test_r2": test_r2,
                "mining_s": mining_s,
                "nonce": block.nonce,
                "round_s": round_s,
                "server_cpu_s": own_s,
                "block_hash": block.hash,
            }
            rows = []
            for peer in contributors:
                reported = received[peer.name][2]  # the client's word: shown, never trusted
                rows.append(
                    shared
                    | {
                        "client": peer.name,
                        "rows": peer.n_samples,
                        "local_mse_before": reported.get("local_mse_before"),
                        "local_mse_after": reported.get("local_mse"),
                        "train_s": reported.get("train_s"),
                    }
                )
            try:
                self.metrics.add_round(rows)
            except OSError as error:  # the chain is what matters: say so and go on
                self.say(f"could not write the metrics of round {index}: {error}")
        # One short line a round; the metrics file has the details.
        scored = f", test MSE {test_mse:.4g} (R² {test_r2:.3f})" if self.test_data else ""
        self.say(
            f"round {index}/{self.plan.rounds}: {len(contributors)} of {self.plan.n_clients} "
            f"clients{scored}, {1000 * round_s:.0f} ms, block {block.hash[:8]}"
        )
        if block.choice or block.search:  # what the rule chose, naming any outlier it left out
            self.say(f"  {describe_choice(block)}")

    def _probe(self, index: int, chain: Chain, received: dict) -> bool:
        """Ask the clients of RECEIVED for their gradients at the candidate their updates make,
        and add them to their updates; False if one left meanwhile (the candidate changed)."""
        contributors = [p for p in self.peers if p.name in received]
        names = [p.name for p in contributors]
        updates = {n: received[n][0] for n in names}
        self.candidate = probe_point(names, updates)
        # Each answer tells us a client's curvature along one more direction: a client answers a
        # second probe only if it names who left since the first (gone, or back with a new
        # update), and no third, which would leave the round with no client to finish it.
        if len(self.probed) == MAX_PROBES:
            raise RunAborted(
                f"round {index} lost clients at {MAX_PROBES} probes; a client answers no more "
                "probes a round"
            )
        last = self.probed[-1] if self.probed else {}
        left = [n for n, u in last.items() if n not in received or received[n][0] is not u]
        self.probed.append(updates)
        probe = {
            "type": "probe",
            "round": index,
            "weights": self.candidate.weights.copy(),
            "bias": self.candidate.bias,
            "updates": updates_to_json(updates),
            "left": left,
        }
        self._send_to(contributors, probe, index)
        answers: dict = {}
        deadline = time.monotonic() + self.round_timeout_s
        self._collect(index, "gradient", chain, deadline, answers)
        if set(answers) != set(names) or set(received) != set(names):
            return False
        received.update(answers)
        return True

    def _await_quorum(self, index: int, received: dict, deadline: float) -> None:
        """Round INDEX has RECEIVED fewer updates than its quorum: wait until enough clients
        have come back to make it up, or raise RunAborted at DEADLINE."""

        def enough() -> bool:  # the clients in the round, and those come back to join it
            return len(self.peers) + len(self.standby) >= self.plan.min_clients

        def status() -> str:
            gone = "; ".join(f"{name} {why}" for name, why in sorted(self._missing().items()))
            return (
                f"round {index} has {len(received)} of the {self.plan.min_clients} updates it "
                f"needs (--min-clients); waiting for clients to come back ({gone})"
            )

        def hear_peer(peer: _Connection) -> None:  # one that has sent its update waits quietly
            self._hear_idle(peer)  # and one that stirs is out, with what it sent

        if not self._wait_for_clients(deadline, enough, status, hear_peer=hear_peer):
            gone = "; ".join(f"{name} {why}" for name, why in sorted(self._missing().items()))
            raise RunAborted(
                f"round {index} cannot go on with {len(received)} of the {self.plan.min_clients} "
                f"clients it needs (--min-clients); none came back within "
                f"{self.rejoin_timeout_s:g} s (--rejoin-timeout-s): {gone}"
            )

    def _announce_mining(self, index: int) -> None:
        if self.mining_estimate_s > settings.SLOW_MINING_S:
            text = (
                f"mining block {index} at {self.plan.difficulty_bits} bits: about "
                f"{self.mining_estimate_s:.0f} s expected"
            )
            self.say(text)
            self._send_to(self.peers + self.standby, {"type": "waiting", "reason": text}, index)

    def _missing(self) -> dict[str, str]:
        """Every client of the run not taking part in this block, and why."""
        participants = self.chain.genesis.run.participants
        present = {p.name for p in self.peers}
        missing = {n: self.absent.get(n, "not connected") for n in participants if n not in present}
        return missing

    def _close_run(self, chain: Chain) -> None:
        """Collect every client's attestation of the last round and seal them in a closing
        block, so the last round, like every other, is checked by the clients."""
        index = self.round_index = self.plan.rounds + 1
        self._bring_in_standby()
        self._send_to(self.peers, {"type": "close", "round": index}, index)
        deadline = time.monotonic() + self.round_timeout_s
        self.received = {}
        received = self._collect(index, "attest", chain, deadline, self.received)
        attestations = {name: attestation for name, (_, attestation, _) in received.items()}
        self._announce_mining(index)
        block = make_closing_block(
            chain.last, attestations=attestations, server_key=self.key, missing=self._missing()
        )
        self._append(chain, block)
        self.say(f"closing block mined: {len(attestations)} clients attest the last round")

    def _append(self, chain: Chain, block: Block) -> None:
        """Verify and write BLOCK, then announce it to every client connected."""
        try:
            chain.append(block)
        except OSError as error:  # a full disk, say: every block before this one is safe
            raise RunAborted(f"cannot write block {block.index}: {error}") from None
        except ChainError as error:  # a bug of ours, never a peer's doing: say so and stop
            raise RunAborted(f"the server made a block that does not verify: {error}") from None
        announcement = {"type": "block", "block": block_to_json(block)}
        self._send_to(self.peers + self.standby, announcement, block.index + 1)

    def _collect(
        self,
        index: int,
        kind: str,
        chain: Chain,
        deadline: float,
        received: dict[str, tuple[ClientUpdate | None, str, dict]],
    ) -> dict[str, tuple[ClientUpdate | None, str, dict]]:
        """Add to RECEIVED each client's KIND message for round INDEX, checked: its update
        (None for an attestation alone), its attestation of the last block, and its metrics. A
        client that disconnects, sends something bad or nothing in time is left out of the
        round, its reason recorded, and the others go on. Clients may come back meanwhile."""

        def hear_peer(peer: _Connection) -> None:
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
                    self.detail(f"{peer.name}'s {kind} for round {index} checked: signatures hold")
            except _Refusal as refusal:
                received.pop(peer.name, None)
                self._leave_out(peer, index, str(refusal))

        # Past the deadline, the last look reads what has already arrived, so a peer is never
        # blamed for time another peer's message took.
        every_peer = lambda: all(p.name in received for p in self.peers)  # noqa: E731
        handle = lambda c: self._handle(c, hear_peer)  # noqa: E731
        if not self._serve_until(deadline, every_peer, handle):
            for peer in [p for p in self.peers if p.name not in received]:
                why = f"sent no {kind} within {self.round_timeout_s:g} s (--round-timeout-s)"
                self._leave_out(peer, index, why)
        # A client that left after its message arrived is out, with what it sent (_leave_out
        # takes it): the block must never count a client it also records as missing.
        staying = {peer.name for peer in self.peers}
        for name in [name for name in received if name not in staying]:
            del received[name]
        return received

    def _leave_out(self, peer: _Connection, index: int, reason: str) -> None:
        """Take PEER out of the run for REASON, with whatever it sent in this round, tell it
        why, and record it for every block."""
        if any(peer is p for p in self.peers):
            self.received.pop(peer.name, None)
        self.absent[peer.name] = printable(f"{reason} (round {index})", limit=MAX_REASON_CHARS - 2)
        self.say(f"{peer.name} is left out of the run: {reason}")
        self.selector.unregister(peer.sock)
        for group in (self.peers, self.standby):
            if peer in group:
                group.remove(peer)
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
        if kind == "gradient":
            return self._check_gradient(peer, message, index, chain)
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
        start_gradient = ()
        if self.rule.probes:
            start_gradient = self._gradient_of(message, "update")
        elif "gradient" in message:
            raise _Refusal(f"sent a gradient, which a {self.plan.aggregation} run does not take")
        update = ClientUpdate(
            LinearModel(message["weights"], message["bias"]),
            peer.n_samples,
            training=TrainingSettings(
                message["seed"], message["generations"], message["population"]
            ),
            signature=message["signature"].hex(),
            gradient=start_gradient,
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

    def _gradient_of(self, message: dict, kind: str) -> tuple[float, ...]:
        if "gradient" not in message:
            raise _Refusal(f"sent its {kind} without its gradient, which scaffold needs")
        size = len(self.run_features) + 1
        if message["gradient"].size != size:
            raise _Refusal(f"sent a gradient of {message['gradient'].size} numbers, not {size}")
        return tuple(map(float, message["gradient"]))

    def _check_gradient(
        self, peer: _Connection, message: dict, index: int, chain: Chain
    ) -> tuple[ClientUpdate, str, dict]:
        """A client's answer to the probe: its update with the gradient at the candidate."""
        if peer.name not in self.received:
            raise _Refusal(f"sent a gradient for round {index} without an update in it")
        update, attestation, metrics = self.received[peer.name]
        at_candidate = self._gradient_of(message, "gradient")
        signature = message["signature"].hex()
        signed = probe_message(
            genesis_hash=chain.genesis.hash,
            index=index,
            previous_hash=chain.last.hash,
            name=peer.name,
            candidate=self.candidate,
            gradient=at_candidate,
        )
        if not signature_holds(peer.public_key, signature, signed):
            raise _Refusal(
                f"sent a gradient for round {index} not signed by its key at the round's candidate"
            )
        probed = replace(update, probe_gradient=at_candidate, probe_signature=signature)
        return probed, attestation, metrics

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

    def _send_now(self, sock: ssl.SSLSocket, message: dict | bytes) -> None:
        """Send MESSAGE (or an encoded frame) whole, waiting at most send_timeout_s for the
        peer to take it."""
        sock.settimeout(self.send_timeout_s)
        try:
            send_message(sock, message)
        finally:
            with contextlib.suppress(OSError):
                sock.setblocking(False)

    def _send_to(self, connections: list[_Connection], message: dict, index: int) -> None:
        """Send MESSAGE to each of CONNECTIONS; one that cannot take it is left out."""
        try:
            frame = encode_message(message)  # once: a block goes to every client alike
        except ProtocolError as error:  # a message this server cannot put on the wire
            raise RunAborted(f"cannot send {message['type']!r}: {error}") from None
        for peer in list(connections):
            try:
                self._send_now(peer.sock, frame)
            except OSError as error:
                self._leave_out(peer, index, f"disconnected ({error or type(error).__name__})")

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

    def _drop(self, connection: _Connection, reason: str) -> None:
        self.selector.unregister(connection.sock)
        self.waiting.remove(connection)
        self.say(f"dropped {connection.address}: {reason}")
        connection.sock.close()

    def _abort(self, reason: str) -> None:
        message = {"type": "refused", "reason": printable(f"run stopped: {reason}")}
        for peer in self.peers + self.standby:
            with contextlib.suppress(OSError, ProtocolError):
                self._send_now(peer.sock, message)

    def _close(self) -> None:
        if self.chain is not None and self.chain.store is not None:
            self.chain.store.close()  # also when the run stopped before its rounds began
        for connection in [*self.peers, *self.standby, *self.waiting]:
            connection.sock.close()
        self.selector.close()


def _spoke(connection: _Connection) -> bool:
    """Whether a client that should be silent has spoken (or sent what is not a frame), rather
    than closed its connection."""
    try:
        return connection.reader.receive(connection.sock) is not None
    except ProtocolError:
        return True


class _Refusal(Exception):
    """A registration the server turns down, with the reason sent to that client."""
