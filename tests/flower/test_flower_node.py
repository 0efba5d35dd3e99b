"""A SuperNode's side (flower/node.py): what it keeps in Flower's Context.state between messages
cannot be turned against it, and a server whose key changes is refused."""

import json

import pytest
from flower_grid import FakeGrid, HonestNode, fast_run, honest_nodes, serve, server_app
from flwr.app import ConfigRecord, Message

from fedchain.federation.client import ClientFailed
from fedchain.federation.server import RunAborted
from fedchain.flower.node import STATE, node_choices
from fedchain.flower.records import pack, unpack
from fedchain.settings import MAX_FRAME_BYTES


def finished_run(folder, **settings):
    """A whole run over the in-process Grid: its settings, grid and first node."""
    run = fast_run(folder, **settings)
    nodes = honest_nodes(run, 2)
    grid = FakeGrid(nodes)
    serve(grid, run)
    return run, grid, nodes[101]


def failure(reply):
    return unpack(reply.content, MAX_FRAME_BYTES)[2]


def again(message, node, server_key=None):
    """MESSAGE's protocol messages sent anew to NODE, naming SERVER_KEY if given."""
    messages, key, _ = unpack(message.content, MAX_FRAME_BYTES)
    content = pack(messages, server_key=server_key or key)
    with server_app():
        fresh = Message(content, dst_node_id=101, message_type=message.metadata.message_type)
    fresh.metadata.__dict__["_message_id"] = "again"
    (reply,) = node(fresh)
    return reply


def test_a_server_whose_key_changes_during_the_run_is_refused(tmp_path):
    run, grid, _ = finished_run(tmp_path)
    first, second = [m for m in grid.sent if m.metadata.dst_node_id == 101][:2]
    node = HonestNode(run, 101, {"partition-id": 0, "num-partitions": 2})
    assert not failure(again(first, node))
    assert "the server's key changed" in failure(again(second, node, server_key="ab" * 32))


def test_a_saved_state_missing_its_fields_is_a_failure_not_an_exception(tmp_path):
    _, grid, node = finished_run(tmp_path)
    last = [m for m in grid.sent if m.metadata.dst_node_id == 101][-1]
    node.context.state[STATE] = ConfigRecord(
        {"server_key": node.context.state[STATE]["server_key"]}
    )
    assert "saved state cannot be read" in failure(again(last, node))


def test_a_saved_state_pointing_at_another_servers_replica_is_refused(tmp_path):
    run, grid, node = finished_run(tmp_path / "ours")
    # The same client, in another server's run: a replica it verified, of another server.
    finished_run(tmp_path / "theirs", keys=run.keys)
    (theirs,) = (tmp_path / "theirs" / "replicas").glob("cli1-*.jsonl")
    kept = node.context.state[STATE]
    state = json.loads(kept["snapshot"])
    state["replica"] = str(theirs)
    node.context.state[STATE] = ConfigRecord(
        {"server_key": kept["server_key"], "snapshot": json.dumps(state)}
    )
    last = [m for m in grid.sent if m.metadata.dst_node_id == 101][-1]
    assert "names server key" in failure(again(last, node))


def test_a_node_holds_the_server_to_the_key_its_config_pins(tmp_path):
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 2)
    nodes[101].context.node_config["server-key"] = "ab" * 32
    with pytest.raises(RunAborted, match="only 1 of 2 clients joined"):
        serve(FakeGrid(nodes), run)
    assert any(
        "the server's key" in line and "is not the node config's server-key abababab" in line
        for line in nodes[101].said
    ), nodes[101].said


def test_a_node_refuses_less_work_than_its_config_asks_for(tmp_path):
    run = fast_run(tmp_path)  # mined at 8 bits
    nodes = honest_nodes(run, 2)
    nodes[102].context.node_config["min-difficulty"] = 12
    with pytest.raises(RunAborted):  # the quorum of two is short of cli2 at once
        serve(FakeGrid(nodes), run)
    assert any("genesis block is invalid" in line for line in nodes[102].said), nodes[102].said


def test_a_node_keeps_its_key_and_replica_where_its_config_says(tmp_path):
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 2)
    nodes[101].context.node_config.update(
        {"keys": str(tmp_path / "node-keys"), "replicas": str(tmp_path / "node-replicas")}
    )
    server, _ = serve(FakeGrid(nodes), run)
    assert (tmp_path / "node-keys" / "cli1.key").is_file()
    (replica,) = (tmp_path / "node-replicas").glob("cli1-*.jsonl")
    assert replica.read_bytes() == server.chain_path.read_bytes()


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"min-difficulty": 65}, "min-difficulty must be 0 to 64, not 65"),
        ({"max-rounds": 0}, "max-rounds must be 1 to"),
        ({"server-key": "xyz"}, "server-key must be 64 hex digits"),
        ({"server-key": 7}, "server-key must be a string"),
        ({"keys": 3}, "keys must be a folder's path, not 3"),
    ],
    ids=str,
)
def test_a_bad_node_config_value_is_named(tmp_path, config, error):
    with pytest.raises(ClientFailed, match=error):
        node_choices(config, fast_run(tmp_path))
