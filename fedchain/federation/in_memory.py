"""A run with no network: the server's protocol and the real clients in one process, every
message still encoded to a frame and decoded as the wire would carry it. The same rules decide
as over TCP (they are the protocol's), so this run and the network's are equal by construction;
the tests run whole federations this way in a fraction of the time, and it is the shape any other
transport takes: hand the protocol the clients' messages, carry out what it returns.

Time is virtual: nothing here waits, so when no client has anything left to say the clock moves
straight to the protocol's next deadline."""

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.federation.client import ClientFailed, FederatedClient
from fedchain.federation.events import (
    Abort,
    Action,
    Closed,
    Detail,
    Disconnect,
    Event,
    Registration,
    Report,
    Say,
    Send,
    Spoke,
    TurnAwayNewcomers,
    Write,
)
from fedchain.federation.plan import RunPlan
from fedchain.federation.protocol import ServerProtocol, Waits
from fedchain.federation.server import RunAborted
from fedchain.learning.dataset import Dataset
from fedchain.ledger.block import Block
from fedchain.ledger.store import ChainWriter
from fedchain.settings import MAX_FRAME_BYTES
from fedchain.trust.handshake import new_challenge
from fedchain.trust.keys import public_hex
from fedchain.wire.frames import FrameReader, encode_message


class VirtualClock:
    """Monotonic time that moves only when told; CPU time is the process's."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def process_time(self) -> float:
        return time.process_time()


def run_in_memory(
    plan: RunPlan,
    key: Ed25519PrivateKey,
    clients: Sequence[FederatedClient],
    *,
    chain_path: Path,
    say: Callable[[str], None] = lambda line: None,
    test_data: Dataset | None = None,
    waits: Waits | None = None,
) -> list[Block]:
    """Run PLAN's federation with CLIENTS, writing the chain to CHAIN_PATH; return its blocks.
    A client that fails (ClientFailed) leaves the run, as one whose connection closed. Raises
    RunAborted as the network server does."""
    clock = VirtualClock()
    protocol = ServerProtocol(plan, key, clock, waits=waits, test_data=test_data)
    by_conn = dict(enumerate(clients, start=1))
    events: deque[Event] = deque()
    blocks: list[Block] = []

    def deliver(conn: int, message: dict) -> None:
        """Carry MESSAGE to a client as the wire would, and its reply back as an event."""
        client = by_conn.get(conn)
        if client is None:
            return
        try:
            reply = client.step(_over_the_wire(message))
        except ClientFailed as error:
            say(f"{client.name}: {error}")
            del by_conn[conn]
            events.append(Closed(conn))
            return
        if reply is not None:
            events.append(Spoke(conn, (_over_the_wire(reply),)))

    def carry_out(actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(to, message):
                    for conn in to:
                        deliver(conn, message)
                case Disconnect(conn, refusal):
                    if refusal is not None:
                        deliver(conn, {"type": "refused", "reason": refusal})
                    by_conn.pop(conn, None)
                case Say(text):
                    say(text)
                case Write(block):
                    writer.append(block)
                    blocks.append(block)
                case Report(report):
                    for line in report.finish(clock.monotonic(), time.process_time())[1]:
                        say(line)
                case Abort(reason):
                    raise RunAborted(reason)
                case Detail() | TurnAwayNewcomers():
                    pass  # no details asked for; no connection here is ever a newcomer

    with ChainWriter(chain_path) as writer:
        carry_out(protocol.start())
        for conn, client in list(by_conn.items()):
            client.connect(public_hex(key))
            challenge = new_challenge()
            greeting = {"type": "challenge", "challenge": challenge}
            if plan.schema is not None:
                greeting["schema"] = plan.schema.canonical()
            registration = _over_the_wire(client.step(_over_the_wire(greeting)))
            events.append(
                Registration(conn, f"in memory ({client.name})", challenge, (registration,))
            )
        while not protocol.finished:
            while events:
                carry_out(protocol.handle(events.popleft()))
            carry_out(protocol.tick())
            if not events and not protocol.finished:
                wake_s = protocol.wake_at()
                if wake_s == math.inf:
                    raise RunAborted("the run stalled: no client has anything to say")
                clock.now_s = max(clock.now_s, wake_s)
    return blocks


def _over_the_wire(message: dict) -> dict:
    """MESSAGE as the other side reads it: framed, checked and decoded."""
    (decoded,) = FrameReader(MAX_FRAME_BYTES).feed(encode_message(message))
    return decoded
