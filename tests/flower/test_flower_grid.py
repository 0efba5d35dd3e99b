"""The ServerApp's transport (flower/grid_driver.py) on a Grid in this process (flower_grid.py):
honest nodes make the chain the in-memory run makes, and hostile or broken ones are refused or
left out, with a reason, without crashing the server or stalling the run."""

import time

import pytest
from flower_grid import FakeGrid, HonestNode, error_reply, fast_run, honest_nodes, serve
from flwr.app import ConfigRecord, Message, RecordDict

from fedchain.federation.client import FederatedClient
from fedchain.federation.in_memory import run_in_memory
from fedchain.federation.plan import RunPlan
from fedchain.federation.server import FRAME_BASE_BYTES, FRAME_BYTES_PER_FEATURE, RunAborted
from fedchain.flower import grid_driver
from fedchain.flower.config import bundled_rows
from fedchain.flower.records import RECORD, pack, unpack
from fedchain.learning.aggregation import PROXIMAL, SCAFFOLD
from fedchain.learning.dataset import load_dataset
from fedchain.ledger.report import Verdict, report_chain
from fedchain.ledger.store import load_chain
from fedchain.settings import MAX_FRAME_BYTES
from fedchain.trust.keys import load_or_create_key, public_hex
from fedchain.wire.frames import HEADER, MAGIC, VERSION, encode_message


def in_memory_twin(run, folder):
    """The same run with the clients in memory, with the keys the Flower run made."""
    test = load_dataset(bundled_rows("test.csv"), target=run.target.column)
    server_key, _ = load_or_create_key(run.key)
    clients = [
        FederatedClient(
            name=name,
            data=load_dataset(bundled_rows(f"client{i}.csv"), target=run.target.column),
            seed=None,
            generations=run.generations,
            population=run.population,
            replica=folder / f"{name}.jsonl",
            say=lambda line: None,
            key=load_or_create_key(run.keys / f"{name}.key")[0],
            target=run.target.column,
        )
        for i, name in ((1, "cli1"), (2, "cli2"))
    ]
    plan = RunPlan(
        n_clients=2,
        min_clients=2,
        rounds=run.rounds,
        difficulty_bits=run.difficulty,
        seed=run.seed,
        server_key=public_hex(server_key),
        features=test.feature_names,
        target=run.target,
        aggregation=run.aggregation,
        aggregation_parameters=run.parameters,
    )
    try:
        return run_in_memory(
            plan, server_key, clients, chain_path=folder / "twin.jsonl", test_data=test
        )
    finally:
        for client in clients:
            client.close()


def verified(server) -> bool:
    """Whether the chain file verifies whole, as `blockchain.py verify` checks it."""
    blocks = load_chain(server.chain_path).blocks
    key = server.server_key
    verdict = report_chain(blocks, lambda line: None, show_blocks=False, server_key=key)
    return verdict is Verdict.VALID and blocks == server.blocks


@pytest.mark.parametrize(
    "rule",
    [{}, {"aggregation": SCAFFOLD, "parameters": {PROXIMAL: 1.0}}],
    ids=["fedavg", "scaffold"],
)
def test_honest_nodes_make_a_valid_chain_equal_to_the_in_memory_runs(tmp_path, rule):
    # Scaffold's probe included: a round's candidate goes out and the gradients come back.
    run = fast_run(tmp_path, **rule)
    nodes = honest_nodes(run, 2)
    server, said = serve(FakeGrid(nodes), run)
    chain = load_chain(run.chain)
    assert len(chain.blocks) == run.rounds + 2 and verified(server)
    twin = in_memory_twin(run, tmp_path / "twin")
    assert [b.server_model for b in chain.blocks] == [b.server_model for b in twin]
    assert [b.cli for b in chain.blocks] == [b.cli for b in twin]
    for replica in sorted((tmp_path / "replicas").glob("*.jsonl")):
        assert replica.read_bytes() == run.chain.read_bytes()
    assert not any("did not confirm" in line for line in said)


# --- hostile and broken nodes ---------------------------------------------------------------


def kinds(message):
    """The protocol messages' types a Flower message from the server carries."""
    return [m["type"] for m in unpack(message.content, MAX_FRAME_BYTES)[0]]


def turns(honest, when, then):
    """A node that is HONEST until a message for which WHEN(message) holds; from then on it
    answers with THEN(message, honest) (its replies)."""
    turned = []

    def node(message):
        if turned or when(message):
            turned.append(message)
            return then(message, honest)
        return honest(message)

    return node


def at_train(message):
    return "train" in kinds(message)


def three_of_two(tmp_path, **settings):
    """A run of three nodes that can go on with two of them, and its nodes."""
    run = fast_run(tmp_path, clients=3, min_clients=2, **settings)
    return run, honest_nodes(run, 3)


def assert_completes_without(server, said, name, reason):
    assert verified(server) and len(server.blocks) == server.run.rounds + 2
    assert all(name not in block.cli for block in server.blocks[2:])
    assert any(f"{name} is left out of the run: {reason}" in line for line in said), said


def test_a_failure_a_node_reports_is_printed_escaped(tmp_path):
    run, nodes = three_of_two(tmp_path)
    nodes[103] = turns(
        nodes[103],
        at_train,
        lambda m, _: [Message(pack([], failure="\x1b[2J\x1b[31mred\x07"), reply_to=m)],
    )
    server, said = serve(FakeGrid(nodes), run)
    assert_completes_without(server, said, "cli3", "disconnected")
    assert not any("\x1b" in line or "\x07" in line for line in said)
    assert any(r"failed: \x1b[2J\x1b[31mred\x07" in line for line in said), said


def test_a_silent_node_is_left_out_at_the_deadline_and_not_waited_for_at_the_end(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(grid_driver, "GOODBYE_S", 3.0)  # the wait at the end, were there one
    run, nodes = three_of_two(tmp_path, round_timeout_s=0.3)
    nodes[103] = turns(nodes[103], at_train, lambda m, _: [])
    server, said = serve(FakeGrid(nodes), run)
    # The reason, on the chain too, names the setting as a Flower operator sets it.
    reason = "sent no update within 0.3 s (round-timeout-s in the run config)"
    assert_completes_without(server, said, "cli3", reason)
    assert reason in server.blocks[2].missing["cli3"]
    assert not any("did not confirm" in line for line in said), said


@pytest.mark.parametrize("drop", [False, True], ids=["a None id", "an id left out"])
def test_a_node_flower_cannot_deliver_to_is_left_out_at_once(tmp_path, drop):
    run, nodes = three_of_two(tmp_path, round_timeout_s=30.0)
    grid = FakeGrid(nodes)
    grid.drop_refused = drop

    honest = nodes[103]

    def gone_after_welcome(message):
        replies = honest(message)
        if "welcome" in kinds(message):
            grid.refuse.add(103)  # its SuperNode is gone: pushes to it fail from now on
        return replies

    grid.nodes[103] = gone_after_welcome
    started = time.monotonic()
    server, said = serve(grid, run)
    assert_completes_without(server, said, "cli3", "disconnected (Flower could not deliver")
    assert time.monotonic() - started < run.round_timeout_s  # not left out at the deadline


def test_a_frame_larger_than_the_runs_features_need_is_refused(tmp_path):
    run, nodes = three_of_two(tmp_path)
    features = load_dataset(bundled_rows("test.csv")).feature_names  # the run's, from its test
    limit = FRAME_BASE_BYTES + FRAME_BYTES_PER_FEATURE * len(features)
    huge = HEADER.pack(MAGIC, VERSION, limit + 1) + bytes(limit + 1)
    record = RecordDict({RECORD: ConfigRecord({"frames": huge, "server_key": "", "failure": ""})})
    nodes[103] = turns(nodes[103], at_train, lambda m, _: [Message(record, reply_to=m)])
    server, said = serve(FakeGrid(nodes), run)
    assert_completes_without(server, said, "cli3", f"sent a bad frame: frame of {limit + 1} bytes")


def test_a_newcomer_whose_first_reply_is_no_frame_is_refused_with_the_reason(tmp_path):
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 2)
    record = RecordDict(
        {RECORD: ConfigRecord({"frames": b"junk", "server_key": "", "failure": ""})}
    )
    nodes[99] = lambda m: [Message(record, reply_to=m)]
    server, said = serve(FakeGrid(nodes), run)
    assert verified(server)
    assert any("refused Flower node 99: " in line and "frame" in line for line in said), said


def test_a_reply_from_one_node_to_anothers_message_is_not_taken_as_its(tmp_path):
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 2)
    grid = FakeGrid(nodes)

    def forger(message):
        # Answers, in the honest node's name, the last message sent to it: "my client failed".
        victim = next(m for m in reversed(grid.sent) if m.metadata.dst_node_id == 102)
        forged = Message(pack([], failure="gone"), reply_to=victim)
        return [forged, *nodes[101](message)]

    grid.nodes[101] = forger
    server, _ = serve(grid, run)
    assert verified(server) and server.blocks[1].cli == ("cli1", "cli2")


def test_a_second_reply_and_a_reply_to_nothing_are_ignored(tmp_path):
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 2)

    honest = nodes[102]

    def echoing(message):
        (reply,) = honest(message)
        stray = Message(reply.content, reply_to=message)
        stray.metadata.__dict__["_reply_to_message_id"] = "never-sent"
        return [reply, Message(reply.content, reply_to=message), stray]

    nodes[102] = echoing
    server, _ = serve(FakeGrid(nodes), run)
    assert verified(server) and server.blocks[-2].cli == ("cli1", "cli2")


def test_a_flower_error_leaves_the_node_out(tmp_path):
    run, nodes = three_of_two(tmp_path)
    nodes[103] = turns(nodes[103], at_train, lambda m, _: [error_reply(m, 3, "\x1b[2J")])
    server, said = serve(FakeGrid(nodes), run)
    assert_completes_without(server, said, "cli3", "disconnected")
    assert not any("\x1b" in line for line in said)


def test_a_message_of_the_wrong_kind_for_the_phase_leaves_the_node_out(tmp_path):
    run, nodes = three_of_two(tmp_path)
    first = []

    def registers_again(message, honest):
        (reply,) = honest(message)
        messages = unpack(reply.content, MAX_FRAME_BYTES)[0]
        return [Message(pack(first + messages), reply_to=message)]

    honest = nodes[103]

    def keep_registration(message):
        (reply,) = honest(message)
        if not first:
            first.extend(unpack(reply.content, MAX_FRAME_BYTES)[0])
        return [reply]

    nodes[103] = turns(keep_registration, at_train, registers_again)
    server, said = serve(FakeGrid(nodes), run)
    assert_completes_without(server, said, "cli3", "")


def test_more_nodes_than_clients_and_latecomers_are_turned_away(tmp_path, monkeypatch):
    monkeypatch.setattr(grid_driver, "GREET_EVERY_S", 0.0)  # every step looks for newcomers
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 3)
    grid = FakeGrid(nodes)
    grid.visible = {101, 102, 103}
    # A fourth node, come after the run began: cli1 by its partition, but all the rows.
    late = HonestNode(run, 104, {"partition-id": 0, "num-partitions": 1})
    grid.nodes[104] = late

    def shows_the_latecomer(message):
        if at_train(message):
            grid.visible.add(104)
            grid.visible.discard(103)  # and one that was turned away is gone
        return honest(message)

    honest = nodes[101]
    grid.nodes[101] = shows_the_latecomer
    server, said = serve(grid, run)
    assert verified(server) and server.blocks[0].run.participants.keys() == {"cli1", "cli2"}
    assert any("refused Flower node 103: the run is full (2 clients)" in line for line in said)
    # Greeted once the run has begun, as a client of the genesis coming back would be, and
    # refused with the reason: it holds other rows than the cli1 the chain records.
    assert any(
        "refused Flower node 104: cli1 now has 1070 rows, but the chain records 357" in line
        for line in said
    ), said
    assert all(block.cli == ("cli1", "cli2") for block in server.blocks[1:-1])


def test_an_authorized_client_that_never_joined_comes_in_late(tmp_path, monkeypatch):
    # The run begins at the join timeout with its quorum (cli1, cli2); cli3's SuperNode starts
    # later, and cli3 takes part from the round after it is greeted.
    monkeypatch.setattr(grid_driver, "GREET_EVERY_S", 0.0)
    keys = tmp_path / "keys"
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(
        "".join(
            f"cli{k} {public_hex(load_or_create_key(keys / f'cli{k}.key')[0])}\n" for k in (1, 2, 3)
        )
    )
    run = fast_run(
        tmp_path, rounds=4, clients=3, min_clients=2, authorized_keys=authorized,
        join_timeout_s=1.0,
    )  # fmt: skip
    nodes = honest_nodes(run, 3)
    grid = FakeGrid(nodes)
    grid.visible = {101, 102}

    def shows_cli3_in_round_1(message):
        if at_train(message):
            grid.visible.add(103)
        return honest(message)

    honest = nodes[101]
    grid.nodes[101] = shows_cli3_in_round_1
    server, said = serve(grid, run)
    assert verified(server), said
    clients = [block.cli for block in server.blocks[1:-1]]
    assert clients[0] == ("cli1", "cli2") and clients[-1] == ("cli1", "cli2", "cli3"), clients
    assert "never joined" in server.blocks[1].missing["cli3"]
    assert "cli3" in server.blocks[-1].attestations


def test_a_registration_under_another_nodes_name_and_key_is_refused(tmp_path):
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 2)
    server_key, _ = load_or_create_key(run.key)
    cli2_key, _ = load_or_create_key(run.keys / "cli2.key")
    # cli2's own registration, signing a challenge of another connection: a replay.
    cli2 = FederatedClient(
        name="cli2",
        data=load_dataset(bundled_rows("client2.csv")),
        seed=None,
        generations=1,
        population=2,
        replica=None,
        say=lambda line: None,
        key=cli2_key,
    )
    cli2.connect(public_hex(server_key))
    replayed = pack([cli2.registration(bytes(range(32)))])
    nodes[100] = lambda m: [Message(replayed, reply_to=m)]  # greeted before cli1 and cli2
    server, said = serve(FakeGrid(nodes), run)
    assert verified(server) and server.blocks[1].cli == ("cli1", "cli2")
    assert any(
        "refused Flower node 100: cli2's login signature does not verify" in line for line in said
    ), said


def test_a_first_reply_with_no_registration_is_refused_not_a_crash(tmp_path):
    run = fast_run(tmp_path)
    nodes = honest_nodes(run, 2)
    nodes[100] = lambda m: [Message(pack([]), reply_to=m)]
    server, said = serve(FakeGrid(nodes), run)
    assert verified(server) and server.blocks[1].cli == ("cli1", "cli2")
    assert any("refused Flower node 100: " in line for line in said), said


def test_a_reply_of_more_frames_than_its_message_asked_for_is_refused_unread(tmp_path):
    run, nodes = three_of_two(tmp_path)
    waiting = encode_message({"type": "waiting", "reason": "x" * 1000})
    flood = waiting * 10_000  # each frame small, ten megabytes in all
    record = RecordDict({RECORD: ConfigRecord({"frames": flood, "server_key": "", "failure": ""})})
    nodes[103] = turns(nodes[103], at_train, lambda m, _: [Message(record, reply_to=m)])
    server, said = serve(FakeGrid(nodes), run)
    assert_completes_without(
        server, said, "cli3", f"sent a bad frame: {len(flood)} bytes of frames"
    )


def test_a_run_below_its_quorum_stops_at_once_for_no_node_can_come_back(tmp_path):
    # A node left out is gone for good over Flower (docs/flower.md: no rejoin): waiting the
    # socket server's --rejoin-timeout-s (120 s) for it to come back only stalls the run.
    run, nodes = three_of_two(tmp_path)
    for node_id in (102, 103):
        nodes[node_id] = turns(nodes[node_id], at_train, lambda m, _: [error_reply(m)])
    grid = FakeGrid(nodes)
    with pytest.raises(RunAborted, match="round 1 cannot go on with 1 of the 2 clients") as stop:
        serve(grid, run)
    assert "within 0 s" in str(stop.value)
    # Named as a Flower operator would find it: a run config has no rejoin-timeout-s.
    assert "(min-clients in the run config)" in str(stop.value)
    assert "rejoin-timeout-s" not in str(stop.value)
    assert "(over Flower a node left out does not come back)" in str(stop.value)


def test_a_stopped_run_tells_its_nodes_why(tmp_path):
    run, nodes = three_of_two(tmp_path)
    for node_id in (102, 103):
        nodes[node_id] = turns(nodes[node_id], at_train, lambda m, _: [error_reply(m)])
    grid = FakeGrid(nodes)
    with pytest.raises(RunAborted):
        serve(grid, run)
    last = [m for m in grid.sent if m.metadata.dst_node_id == 101][-1]
    (refused,) = unpack(last.content, MAX_FRAME_BYTES)[0]
    assert refused["type"] == "refused" and refused["reason"].startswith("run stopped: round 1")


def test_a_reply_that_arrived_before_the_deadline_counts(tmp_path, monkeypatch):
    # The driver looks for replies every POLL_S: one that reached the SuperLink before the
    # deadline must be taken in before the deadline is judged, as server.py's last look does.
    # The driver pulls when the nodes have trained (the fake Grid delivers at a pull), then
    # 0.6 s and 1.2 s later; cli3's update reaches the SuperLink between the two, at 0.7 s,
    # before the deadline (1 s after the train was sent, a little before that first pull).
    monkeypatch.setattr(grid_driver, "POLL_S", 0.6)
    run, nodes = three_of_two(tmp_path, rounds=1, round_timeout_s=1.0)
    grid = FakeGrid(nodes)
    grid.delay_s = lambda m: 0.7 if m.metadata.dst_node_id == 103 and at_train(m) else 0.0
    server, said = serve(grid, run)
    assert verified(server) and server.blocks[1].cli == ("cli1", "cli2", "cli3"), said


def test_krum_without_held_out_rows_names_the_run_configs_key_for_them(tmp_path):
    run = fast_run(
        tmp_path, rounds=1, clients=5, min_clients=5, aggregation="krum",
        parameters={"byzantine": 1.0}, test=None,
    )  # fmt: skip
    server, said = serve(FakeGrid(honest_nodes(run, 5)), run)
    assert verified(server)
    assert (
        "krum measures distances in raw weight units: there are no held-out rows "
        "(test in the run config) to scale the features by"
    ) in said


def test_a_node_left_out_while_its_message_is_out_hears_why_once_it_answers(tmp_path):
    # cli3's update reaches the SuperLink after the round's deadline: it is left out while
    # its message is still out, and its refusal goes to it once that message's reply is in.
    run, nodes = three_of_two(tmp_path, rounds=3, round_timeout_s=0.5)
    grid = FakeGrid(nodes)
    # cli3 late for round 1; cli1 slow, but in time, in rounds 2 and 3, so the run is still
    # on when cli3's late answer is in.
    trains = {101: 0, 103: 0}

    def delay_s(message):
        node = message.metadata.dst_node_id
        if node not in trains or not at_train(message):
            return 0.0
        trains[node] += 1
        if node == 103:
            return 0.6 if trains[node] == 1 else 0.0
        return 0.0 if trains[node] == 1 else 0.35

    grid.delay_s = delay_s
    server, said = serve(grid, run)
    assert_completes_without(server, said, "cli3", "sent no update within 0.5 s")
    last = [m for m in grid.sent if m.metadata.dst_node_id == 103][-1]
    (refused,) = unpack(last.content, MAX_FRAME_BYTES)[0]
    assert refused["type"] == "refused"
    assert refused["reason"].startswith("left out: sent no update within 0.5 s"), refused


def test_a_grid_that_fails_stops_the_run_with_the_reason_and_keeps_the_blocks(tmp_path):
    run = fast_run(tmp_path, rounds=3)
    grid = FakeGrid(honest_nodes(run, 2))
    pull = grid.pull_messages

    def pull_until_round_2(ids):
        if run.chain.exists() and len(load_chain(run.chain).blocks) >= 2:
            raise ConnectionError("the SuperLink went away")
        return pull(ids)

    grid.pull_messages = pull_until_round_2
    with pytest.raises(RunAborted, match="Flower's Grid failed: ConnectionError: the SuperLink"):
        serve(grid, run)
    blocks = load_chain(run.chain).blocks
    assert len(blocks) >= 2
    assert report_chain(blocks, lambda line: None, show_blocks=False) is Verdict.INCOMPLETE


def test_a_hundred_nodes_complete_a_run_whose_chain_verifies(tmp_path):
    # The scale, through the same driver, in this process (benchmark.py flower runs it
    # in Flower's own simulation, and reports the chain's size, verify's time and memory).
    run = fast_run(tmp_path, rounds=1, clients=100, min_clients=100)
    server, said = serve(FakeGrid(honest_nodes(run, 100)), run)
    assert verified(server), said[-5:]
    assert len(server.blocks[1].cli) == 100 and len(server.blocks[2].attestations) == 100
