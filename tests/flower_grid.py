"""A Grid in this process for the Flower transport's tests: each node a real ClientApp handler
(node.answer) with a Context of its own, or a scripted peer that answers as it likes; no Ray, no
SuperLink, a whole run in about a second."""

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedchain.flower.config import FlowerRun
from fedchain.flower.grid_driver import FlowerServer
from fedchain.flower.node import answer

# A node takes a message delivered to it and returns its replies (none, one, or more).
Node = Callable[[Message], list[Message]]

GENERATIONS, POPULATION = 60, 12  # enough to train; quick


def fast_run(folder: Path, **settings) -> FlowerRun:
    """A run whose files are all under FOLDER, cheap to mine and train."""
    base = dict(
        rounds=3,
        seed=7,
        difficulty=8,
        chain=folder / "chain.jsonl",
        key=folder / "keys" / "server.key",
        replicas=folder / "replicas",
        keys=folder / "keys",
        generations=GENERATIONS,
        population=POPULATION,
        round_timeout_s=5.0,
        join_timeout_s=5.0,
    )
    return FlowerRun(**{**base, **settings})


@dataclass
class HonestNode:
    """A SuperNode running the real ClientApp handler, keeping its own Context across messages."""

    run: FlowerRun
    node_id: int
    node_config: dict
    said: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = Context(
            run_id=1, node_id=self.node_id, node_config=self.node_config, state=RecordDict(),
            run_config={},
        )  # fmt: skip

    def __call__(self, message: Message) -> list[Message]:
        return [answer(message, self.context, self.run, self.said.append)]


def honest_nodes(run: FlowerRun, n: int, first_id: int = 101) -> dict[int, HonestNode]:
    return {
        first_id + k: HonestNode(run, first_id + k, {"partition-id": k, "num-partitions": n})
        for k in range(n)
    }


def error_reply(message: Message, code: int = 0, reason: str = "boom") -> Message:
    return Message(Error(code, reason), reply_to=message)


class FakeGrid:
    """Flower's Grid as the driver uses it. A pushed message is delivered at the next pull, and
    a pulled reply is handed over once, as the SuperLink does. Unlike a SuperLink it checks
    nothing about what a reply answers: the driver must."""

    def __init__(self, nodes: dict[int, Node]) -> None:
        self.nodes = dict(nodes)
        self.visible: set[int] | None = None  # node ids get_node_ids shows; None: all of them
        self.refuse: set[int] = set()  # node ids a push to fails (a None id, as http_grid's)
        self.ids = (f"m{k}" for k in itertools.count(1))
        self.drop_refused = False
        # How long after a node has made its replies they reach the SuperLink (a slow link).
        self.delay_s: Callable[[Message], float] = lambda message: 0.0
        self.sent: list[Message] = []
        self.undelivered: list[Message] = []
        self.replies: list[tuple[float, Message]] = []  # each with when it arrives
        self.pulls = 0

    def get_node_ids(self) -> list[int]:
        return sorted(self.nodes if self.visible is None else self.visible & set(self.nodes))

    def push_messages(self, messages) -> list[str | None]:
        """Each message's id, or None for one that cannot be delivered (as Flower's deployed
        Grid says it); with drop_refused, such a message is left out of the ids instead (as
        its in-memory Grid does)."""
        ids: list[str | None] = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id in self.refuse or node_id not in self.nodes:
                if not self.drop_refused:
                    ids.append(None)
                continue
            message.metadata.__dict__["_message_id"] = next(self.ids)
            message.metadata.__dict__["_src_node_id"] = 1
            self.sent.append(message)
            self.undelivered.append(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        """Deliver what was pushed since the last pull, in order, then hand over the replies
        to MESSAGE_IDS (a reply to anything else waits)."""
        self.pulls += 1
        delivering, self.undelivered = self.undelivered, []
        for message in delivering:
            replies = self.nodes[message.metadata.dst_node_id](message)
            arrives_s = time.monotonic() + self.delay_s(message)
            for reply in replies:
                reply.metadata.__dict__["_message_id"] = next(self.ids)
                # Who sent a reply is the one thing a SuperLink knows for sure (the node's
                # connection); what it answers is the node's to say.
                reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
                self.replies.append((arrives_s, reply))
        wanted, now = set(message_ids), time.monotonic()
        out = [(at, r) for at, r in self.replies if at <= now]
        out = [(at, r) for at, r in out if r.metadata.reply_to_message_id in wanted]
        self.replies = [pair for pair in self.replies if pair not in out]
        return [r for _, r in out]


def serve(grid: FakeGrid, run: FlowerRun) -> tuple[FlowerServer, list[str]]:
    """Run RUN's server over GRID to its end; the server and what it said."""
    said: list[str] = []
    server = FlowerServer(grid, run, run.chain, said.append)
    with server_app():
        server.serve()
    return server, said


@contextlib.contextmanager
def server_app() -> Iterator[None]:
    """Messages made inside are the ServerApp's: Flower's Message reads the run it belongs to
    from the process's task identity, which a ServerApp process has set before main() runs."""
    kept = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = kept
