"""A SuperNode's side (flower/node.py): what it keeps in Flower's Context.state between messages
cannot be turned against it, and a server whose key changes is refused."""

import json

from flower_grid import FakeGrid, HonestNode, fast_run, honest_nodes, serve, server_app
from flwr.app import ConfigRecord, Message

from fedchain.flower.node import STATE
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
