"""A SuperNode's side of a run: which client it is, and its answer to each message.

Flower may run every message in a fresh process (its deployment does), so nothing is kept in
memory: the client is built again from its rows and key at each message and restored from the
snapshot its node keeps in Flower's Context.state (federation/client_snapshot.py), its replica
read back and verified. The server's key is pinned at the first message the node takes."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message

from fedchain import settings
from fedchain.federation.client import ClientFailed, FederatedClient
from fedchain.federation.client_snapshot import restore, snapshot
from fedchain.flower.config import FlowerRun, bundled_rows
from fedchain.flower.records import pack, unpack
from fedchain.learning.dataset import DataError, Dataset, load_dataset
from fedchain.learning.partition import pool, split_rows
from fedchain.ledger.block import MAX_DIFFICULTY_BITS
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import check_public_hex, load_or_create_key
from fedchain.wire.messages import ProtocolError

STATE = "fedchain-client"  # the node's record in Context.state


@dataclass(frozen=True)
class Identity:
    """Who a node is in the run: its client's name and rows."""

    name: str
    data: Dataset


def identity(node_config: dict, run: FlowerRun) -> Identity:
    """The client a node is: NAME and DATA from its node config if it gives them (a deployed
    SuperNode: --node-config "name=cli1 data=/path/rows.csv"), else by its partition-id: client
    K of run.data's clientK.csv, or of the bundled rows (cli1 and cli2 on client1.csv and
    client2.csv, as the socket demo; for more clients, the same rows split evenly)."""
    target = run.target.column
    if "name" in node_config or "data" in node_config:
        name, data = str(node_config.get("name", "")), str(node_config.get("data", ""))
        if not name or not data:
            raise ClientFailed("the node config names a client with both name and data, or neither")
        return Identity(name, load_dataset(data, target=target))
    try:
        partition, partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise ClientFailed(
            "the node config gives neither name and data nor partition-id and num-partitions"
        ) from None
    if not 0 <= partition < partitions:
        raise ClientFailed(f"partition-id {partition} is not below num-partitions {partitions}")
    if run.data is not None:
        return Identity(
            f"cli{partition + 1}",
            load_dataset(run.data / f"client{partition + 1}.csv", target=target),
        )
    halves = [load_dataset(bundled_rows(f"client{k}.csv"), target=target) for k in (1, 2)]
    if partitions == 2:
        return Identity(f"cli{partition + 1}", halves[partition])
    name, data = list(split_rows(pool(halves), partitions).items())[partition]
    return Identity(name, data)


@dataclass(frozen=True)
class NodeChoices:
    """What a node's operator decides, not the server's run config: where its key and replica
    live, the least work it takes for a block, the most rounds it joins, and the server key it
    expects (None: the one the first message names, pinned from then on)."""

    keys: Path
    replicas: Path
    min_difficulty: int = settings.MIN_DIFFICULTY_BITS
    max_rounds: int = settings.MAX_ROUNDS
    server_key: str | None = None


def node_choices(node_config: Mapping[str, object], run: FlowerRun) -> NodeChoices:
    """The node config's keys, replicas, min-difficulty, max-rounds and server-key (as
    client.py's --key folder, --replica folder, --min-difficulty, --max-rounds, --server-key);
    the folders default to the run config's. Raises ClientFailed naming a bad one."""

    def integer(key: str, default: int, low: int, high: int) -> int:
        value = node_config.get(key, default)
        if type(value) is not int or not low <= value <= high:
            raise ClientFailed(f"the node config's {key} must be {low} to {high}, not {value!r}")
        return value

    def folder(key: str, default: Path) -> Path:
        value = node_config.get(key, "")
        if not isinstance(value, str):
            raise ClientFailed(f"the node config's {key} must be a folder's path, not {value!r}")
        return Path(value) if value else default

    server_key = node_config.get("server-key")
    if server_key is not None:
        try:
            server_key = check_public_hex(server_key, "the node config's server-key")
        except (TrustError, TypeError) as error:
            raise ClientFailed(str(error)) from None
    return NodeChoices(
        keys=folder("keys", run.keys),
        replicas=folder("replicas", run.replicas),
        min_difficulty=integer(
            "min-difficulty", settings.MIN_DIFFICULTY_BITS, 0, MAX_DIFFICULTY_BITS
        ),
        max_rounds=integer("max-rounds", settings.MAX_ROUNDS, 1, settings.MAX_ROUNDS),
        server_key=server_key,
    )


def answer(
    message: Message, context: Context, run: FlowerRun, say: Callable[[str], None]
) -> Message:
    """This node's client takes MESSAGE's protocol messages, in order; the reply holds its
    answers, or why it failed (after which the server leaves it out)."""
    name = "this node"
    client = None
    try:
        who = identity(dict(context.node_config), run)
        name = who.name
        ours = node_choices(dict(context.node_config), run)
        incoming, server_key, _ = unpack(message.content, settings.MAX_FRAME_BYTES)
        if ours.server_key is not None and server_key != ours.server_key:
            raise ClientFailed(
                f"the server's key {server_key[:16]}… is not the node config's server-key "
                f"{ours.server_key[:16]}…"
            )
        key, created = load_or_create_key(ours.keys / f"{name}.key")
        if created:
            say(f"{name}: made its key in {ours.keys / f'{name}.key'}")
        client = FederatedClient(
            name=name,
            data=who.data,
            seed=None,
            generations=run.generations,
            population=run.population,
            replica=None,
            say=lambda line: say(f"{name}: {line}" if not line.startswith(name) else line),
            key=key,
            target=run.target.column,
            min_difficulty=ours.min_difficulty,
            max_rounds=ours.max_rounds,
        )
        client.replica_folder = ours.replicas
        kept = context.state.config_records.get(STATE)
        if kept is None:  # the run's first message: pin the key it names
            client.connect(server_key)
        else:
            pinned, text = _kept(kept)
            if server_key != pinned:
                raise ClientFailed(
                    f"the server's key changed from {pinned[:16]}… to {server_key[:16]}… during "
                    "the run"
                )
            restore(client, text)
            if client.server_key != pinned:
                raise ClientFailed("this node's saved state names two server keys")
        replies = [reply for m in incoming if (reply := client.step(m)) is not None]
        context.state[STATE] = ConfigRecord(
            {"server_key": client.server_key, "snapshot": snapshot(client)}
        )
        return Message(pack(replies), reply_to=message)
    except (ClientFailed, ProtocolError, DataError, TrustError, OSError) as error:
        say(f"{name}: {error}")
        return Message(pack([], failure=str(error) or type(error).__name__), reply_to=message)
    finally:
        if client is not None:
            client.close()


def _kept(record: ConfigRecord) -> tuple[str, str]:
    """The server key a node pinned and its client's snapshot, from its record in
    Context.state. Raises ClientFailed if they are not there."""
    pinned, text = record.get("server_key"), record.get("snapshot")
    if type(pinned) is not str or type(text) is not str:
        raise ClientFailed("this node's saved state cannot be read: its server key or snapshot")
    return pinned, text
