"""The ServerApp's transport: the run's protocol (federation/protocol.py) driven over Flower's
Grid, as server.py drives it over sockets. Flower delivers request and reply, so each node has at
most one message in flight: what the protocol sends a node while it is busy waits, and goes with
the next message, in order. Every reply's messages are one `Spoke` (a registration, first); a
node whose reply is an error, or says its client failed, is `Closed`; one that never answers is
left out by the protocol's own deadlines. Flower never decides anything here."""

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Message
from flwr.serverapp import Grid

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
from fedchain.federation.plan import RunPlan
from fedchain.federation.protocol import Phase, ServerProtocol, Waits
from fedchain.federation.server import FRAME_BASE_BYTES, FRAME_BYTES_PER_FEATURE, RunAborted
from fedchain.flower.config import BUNDLED_TEST, FlowerRun, bundled_rows
from fedchain.flower.records import pack, unpack
from fedchain.learning.dataset import Dataset, load_dataset
from fedchain.ledger.block import Block
from fedchain.ledger.store import ChainWriter
from fedchain.trust.authorized import load_authorized_keys
from fedchain.trust.handshake import new_challenge
from fedchain.trust.keys import load_or_create_key, public_hex
from fedchain.wire.messages import ProtocolError

POLL_S = 0.05  # between looks for replies; Flower's own polling is far slower when deployed
GOODBYE_S = 30.0  # how long the last messages (the run's end) are waited on
# How often, once the run has begun, the SuperLink is asked for nodes not seen before: a client
# of the genesis that never joined may still come in, from the next round, as over a socket.
GREET_EVERY_S = 1.0


def in_the_run_config(setting: str) -> str:
    """How a Flower run's operator sets SETTING, for the lines that name one."""
    if setting == "rejoin-timeout-s":  # no key sets it: the wait is 0 (see FlowerServer.serve)
        return "over Flower a node left out does not come back"
    return f"{setting} in the run config"


@dataclass(eq=False)
class _Node:
    """A SuperNode as the protocol sees it: a connection, named by CONN."""

    conn: int
    node_id: int
    challenge: bytes  # the login challenge it was sent; its first reply registers it
    registered: bool = False
    gone: bool = False
    reachable: bool = True  # False once Flower could not deliver to it
    in_flight: str = ""  # the id of the message awaiting its reply
    asked: int = 0  # how many protocol messages it holds: the reply holds no more
    outbox: list[dict] = field(default_factory=list)


@dataclass
class FlowerServer:
    """One run over GRID, to RUN's settings; SAY is the log."""

    grid: Grid
    run: FlowerRun
    chain_path: Path
    say: Callable[[str], None]
    nodes: dict[int, _Node] = field(default_factory=dict)  # by conn
    blocks: list[Block] = field(default_factory=list)
    server_key: str = ""  # once the key is loaded
    greeted_at: float = -math.inf  # when the SuperLink was last asked for new nodes

    def serve(self) -> list[Block]:
        """Run the federation to its end; return the chain's blocks. Raises RunAborted."""
        run = self.run
        key, created = load_or_create_key(run.key)
        self.say(f"server key {public_hex(key)} ({'made now in' if created else 'from'} {run.key})")
        test = bundled_rows("test.csv") if run.test == BUNDLED_TEST else run.test
        test_data = load_dataset(test, target=run.target.column) if test else None
        authorized = load_authorized_keys(run.authorized_keys) if run.authorized_keys else None
        plan = self._plan(public_hex(key), test_data, authorized)
        waits = Waits(
            round_timeout_s=run.round_timeout_s,
            join_timeout_s=run.join_timeout_s,
            # A node left out is spent (its node id is never greeted again), so a round short
            # of its quorum stops at once instead of waiting for it to come back.
            rejoin_timeout_s=0.0,
        )
        self.protocol = ServerProtocol(
            plan, key, time, waits=waits, test_data=test_data, setting=in_the_run_config
        )
        self.server_key = public_hex(key)
        self.events: deque[Event] = deque()
        self.in_flight: dict[str, _Node] = {}
        self.say(f"the chain goes to {self.chain_path}")
        with ChainWriter(self.chain_path) as self.writer:
            self._carry_out(self.protocol.start())
            while not self.protocol.finished:
                self._step()
            self._say_goodbye()
        return self.blocks

    def _plan(
        self, server_key: str, test_data: Dataset | None, authorized: dict[str, str] | None
    ) -> RunPlan:
        run = self.run
        return RunPlan(
            n_clients=run.clients,
            min_clients=run.min_clients,
            rounds=run.rounds,
            difficulty_bits=run.difficulty,
            seed=run.seed,
            server_key=server_key,
            aggregation=run.aggregation,
            aggregation_parameters=run.parameters,
            features=None if test_data is None else test_data.feature_names,
            target=run.target,
            authorized_keys=authorized,
        )

    def _step(self) -> None:
        """Hand in what has arrived, decide what is due, send, and wait a little for more."""
        protocol = self.protocol
        now = time.monotonic()
        if protocol.phase is Phase.ADMITTING or now >= self.greeted_at + GREET_EVERY_S:
            self.greeted_at = now
            self._greet_newcomers()
        # The last look, as server.py takes it: what reached the SuperLink while this waited
        # counts in the decision, so a node is never blamed for the time between two pulls.
        heard = self._collect()
        while self.events and not protocol.finished:
            self._carry_out(protocol.handle(self.events.popleft()))
        while not protocol.finished and protocol.wake_at() <= time.monotonic():
            self._carry_out(protocol.tick())
        self._flush()
        if not protocol.finished and not heard:
            time.sleep(POLL_S)

    def _greet_newcomers(self) -> None:
        """Send each node not seen before its login challenge (the socket's first message)."""
        known = {node.node_id for node in self.nodes.values()}
        for node_id in sorted(set(self._ask(self.grid.get_node_ids)) - known):
            challenge = new_challenge()
            node = _Node(len(self.nodes) + 1, node_id, challenge)
            self.nodes[node.conn] = node
            node.outbox.append({"type": "challenge", "challenge": challenge})

    def _flush(self) -> None:
        """Each idle node's waiting messages, in order, as one Flower message."""
        for node in list(self.nodes.values()):
            if node.in_flight or not node.outbox or not node.reachable:
                continue  # a node left out still gets its refusal: nothing else is queued
            batch, node.outbox = node.outbox, []
            kind = "train" if any(m["type"] == "train" for m in batch) else "query"
            content = pack(batch, server_key=self.server_key)
            message = Message(content, dst_node_id=node.node_id, message_type=kind)
            # One at a time: a Grid that cannot take a message says so by a None id (deployed)
            # or by leaving its id out (in memory), and only alone is the message it means known.
            ids = list(self._ask(self.grid.push_messages, [message]))
            if len(ids) != 1 or not ids[0]:
                self._unreachable(node)
                continue
            node.in_flight, node.asked = ids[0], len(batch)
            self.in_flight[ids[0]] = node

    @staticmethod
    def _ask(call: Callable, *args: object) -> object:
        """CALL(*ARGS) on Flower's Grid. Whatever fails there (its SuperLink gone, a gRPC
        error) is not any client's doing and leaves no way on: the run stops with its reason,
        and the blocks so far are on disk."""
        try:
            return call(*args)
        except Exception as error:  # the Grid's errors are Flower's and gRPC's, many kinds
            raise RunAborted(f"Flower's Grid failed: {type(error).__name__}: {error}") from error

    def _unreachable(self, node: _Node) -> None:
        """Flower cannot deliver to NODE (its SuperNode has left, say): it is out at once, and
        nothing more is tried, its refusal neither."""
        node.gone, node.reachable = True, False
        if node.registered:
            error = f"Flower could not deliver to node {node.node_id}"
            self.events.append(SendFailed(node.conn, error))
        else:
            self.say(f"dropped Flower node {node.node_id}: Flower could not deliver to it")

    def _collect(self) -> bool:
        """Take in the replies that have arrived; whether any had."""
        if not self.in_flight:
            return False
        replies = list(self._ask(self.grid.pull_messages, list(self.in_flight)))
        for reply in replies:
            asked = reply.metadata.reply_to_message_id
            node = self.in_flight.get(asked)
            # A reply answers a message in flight, from the node it went to; anything else
            # (one node answering for another, say) is not that node's to give.
            if node is None or reply.metadata.src_node_id != node.node_id:
                continue
            del self.in_flight[asked]
            node.in_flight = ""
            if not node.gone:
                self._hear(node, reply)
        return bool(replies)

    def _hear(self, node: _Node, reply: Message) -> None:
        if reply.has_error():
            self.say(f"node {node.node_id}: Flower reports error {reply.error.code}")
            self._lose(node)
            return
        try:
            messages, _, failure = unpack(reply.content, self._frame_limit(), node.asked)
        except ProtocolError as error:
            if node.registered:  # the protocol leaves it out, and says why
                self.events.append(BadFrame(node.conn, str(error)))
            else:
                self._refuse(node, str(error))
            return
        if failure:
            self.say(f"node {node.node_id}'s client failed: {printable(failure)}")
            self._lose(node)
        elif not node.registered and not messages:
            self._refuse(node, "its first reply holds no registration")
        elif not node.registered:
            node.registered = True
            address = f"Flower node {node.node_id}"
            self.events.append(Registration(node.conn, address, node.challenge, tuple(messages)))
        elif messages:
            self.events.append(Spoke(node.conn, tuple(messages)))

    def _lose(self, node: _Node) -> None:
        node.gone, node.outbox = True, []  # nothing more goes to it: its client has failed
        self.events.append(Closed(node.conn))

    def _refuse(self, node: _Node, reason: str) -> None:
        """Turn away NODE, not registered yet, telling it why (as the socket server does)."""
        reason = printable(reason)
        self.say(f"refused Flower node {node.node_id}: {reason}")
        node.outbox.append({"type": "refused", "reason": reason})
        self._flush()
        node.gone = True

    def _frame_limit(self) -> int:
        """The longest frame a node may send: sized from the run once its features are known,
        as the socket server sizes it."""
        if not self.protocol.run_features:
            return settings.MAX_FRAME_BYTES
        sized = FRAME_BASE_BYTES + FRAME_BYTES_PER_FEATURE * len(self.protocol.run_features)
        return min(settings.MAX_FRAME_BYTES, sized)

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(to, message):
                    for node in (self.nodes[conn] for conn in to):
                        if not node.gone:
                            node.outbox.append(message)
                case Disconnect(conn, refusal):
                    node = self.nodes[conn]
                    node.gone = True
                    # Its last words: the refusal alone, sent now or, if a message is still
                    # with it, once that one's reply is in, so a node always learns why.
                    refused = {"type": "refused", "reason": refusal}
                    node.outbox = [] if refusal is None else [refused]
                    self._flush()
                case Say(text):
                    self.say(text)
                case Write(block):
                    self.writer.append(block)
                    self.blocks.append(block)
                case Report(report):
                    for line in report.finish(time.monotonic(), time.process_time())[1]:
                        self.say(line)
                case Abort(reason):
                    # Every client is told, as server.py tells them; one whose message is still
                    # in flight is not waited for.
                    stopped = {"type": "refused", "reason": printable(f"run stopped: {reason}")}
                    for member in self.protocol.members:
                        self.nodes[member.conn].outbox.append(stopped)
                    self._flush()
                    raise RunAborted(reason)
                case Detail() | TurnAwayNewcomers():
                    pass  # no details asked for; a node joining late is refused by the protocol

    def _say_goodbye(self) -> None:
        """Deliver the run's last messages (its end), so every node's client finishes."""
        self._flush()
        deadline = time.monotonic() + GOODBYE_S
        while self._awaited() and time.monotonic() < deadline:
            if not self._collect():
                time.sleep(POLL_S)
            self._flush()
        if awaited := self._awaited():
            self.say(f"{len(awaited)} node(s) did not confirm the run's end")

    def _awaited(self) -> list[_Node]:
        """The nodes of the run still to answer: not those left out or never let in, whose
        last message may never be answered (a silent node's, say)."""
        return [n for n in self.in_flight.values() if n.registered and not n.gone]
