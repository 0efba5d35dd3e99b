"""A client restored from its snapshot at every message (federation/client_snapshot.py), as
Flower's deployment runs each message in a fresh process: a whole run of such clients gives the
chain a client kept in memory gives, model for model, for FedAvg and scaffold (whose probes
carry state from one message to the next)."""

import pytest
from chain_helpers import CLIENT_KEYS, SERVER_KEY
from processes import ROOT

from fedchain.federation.client import ClientFailed, FederatedClient, Stage
from fedchain.federation.client_snapshot import restore, snapshot
from fedchain.federation.in_memory import run_in_memory
from fedchain.federation.plan import RunPlan
from fedchain.learning.aggregation import FEDAVG, PROXIMAL, SCAFFOLD
from fedchain.learning.dataset import load_dataset
from fedchain.trust.keys import public_hex

DATASETS = {f"cli{i}": load_dataset(ROOT / "data" / f"client{i}.csv") for i in (1, 2)}


def new_client(name, folder, said):
    client = FederatedClient(
        name=name,
        data=DATASETS[name],
        seed=None,
        generations=300,
        population=24,
        replica=None,
        say=said.append,
        key=CLIENT_KEYS[name],
    )
    client.replica_folder = folder
    return client


class RestoredAtEveryMessage:
    """A client that lives only from one message to the next: built anew, restored from the
    snapshot the last message left, stepped, snapshotted and closed."""

    def __init__(self, name, folder, said):
        self.name, self.folder, self.said = name, folder, said
        self.kept = ""
        self.restores = 0

    def connect(self, server_key):
        client = new_client(self.name, self.folder, self.said)
        client.connect(server_key)
        self.kept = snapshot(client)

    def step(self, message):
        client = new_client(self.name, self.folder, self.said)
        try:
            restore(client, self.kept)
            self.restores += 1
            reply = client.step(message)
            self.kept = snapshot(client)
            return reply
        finally:
            client.close()

    def close(self):
        pass


def run(tmp_path, members, aggregation, parameters):
    plan = RunPlan(
        n_clients=2,
        min_clients=2,
        rounds=3,
        difficulty_bits=8,
        seed=7,
        server_key=public_hex(SERVER_KEY),
        aggregation=aggregation,
        aggregation_parameters=parameters,
    )
    return run_in_memory(plan, SERVER_KEY, members, chain_path=tmp_path / "chain.jsonl")


@pytest.mark.parametrize(
    ("aggregation", "parameters"), [(FEDAVG, {}), (SCAFFOLD, {PROXIMAL: 1.0})], ids=str
)
def test_clients_restored_at_every_message_make_the_chain_of_clients_kept_in_memory(
    tmp_path, aggregation, parameters
):
    said = []
    kept = [new_client(name, tmp_path / "kept", said) for name in DATASETS]
    restored = [RestoredAtEveryMessage(name, tmp_path / "restored", said) for name in DATASETS]
    (tmp_path / "kept").mkdir()
    (tmp_path / "restored").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    expected = run(tmp_path / "a", kept, aggregation, parameters)
    got = run(tmp_path / "b", restored, aggregation, parameters)
    for client in kept:
        client.close()
    assert [b.server_model for b in got] == [b.server_model for b in expected]
    # The updates' signatures differ with the genesis's time; what they sign does not.
    models = [
        {n: (u.model, u.gradient, u.probe_gradient) for n, u in b.client_model.items()}
        for b in expected
    ]
    assert [
        {n: (u.model, u.gradient, u.probe_gradient) for n, u in b.client_model.items()} for b in got
    ] == models
    assert all(client.restores >= 5 for client in restored)
    # Each restored client's replica is the server's chain, verified block by block.
    for name in DATASETS:
        (replica,) = (tmp_path / "restored").glob(f"{name}-*.jsonl")
        assert replica.read_bytes() == (tmp_path / "b" / "chain.jsonl").read_bytes()


def finished_snapshot(folder):
    """The snapshot cli1 left at the end of a whole run with cli2, its replica in FOLDER."""
    member = RestoredAtEveryMessage("cli1", folder, [])
    other = new_client("cli2", folder, [])
    run(folder / "run", [member, other], FEDAVG, {})
    other.close()
    return member.kept


def test_a_snapshot_taken_at_the_runs_end_restores_a_finished_client(tmp_path):
    # Mid-run snapshots (awaiting a block, a probe answered) are every message of the whole
    # run of restored clients above.
    kept = finished_snapshot(tmp_path)
    client = new_client("cli1", tmp_path, [])
    restore(client, kept)
    assert client.stage is Stage.DONE
    assert client.chain.closed
    client.close()


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"stage": "READY"}', '{"stage": "NOWHERE"}'],
    ids=["empty", "a list", "missing keys", "unknown stage"],
)
def test_a_snapshot_that_cannot_be_read_is_refused_by_name(tmp_path, text):
    client = new_client("cli1", tmp_path, [])
    with pytest.raises(ClientFailed, match="this node's saved state cannot be read"):
        restore(client, text)


def test_a_snapshot_whose_replica_was_tampered_with_is_refused(tmp_path):
    kept = finished_snapshot(tmp_path)
    (replica,) = tmp_path.glob("cli1-*.jsonl")
    replica.write_text(replica.read_text().replace('"nonce":', '"nonce":1', 1))
    client = new_client("cli1", tmp_path, [])
    with pytest.raises(ClientFailed, match=f"cannot go on with the replica {replica}"):
        restore(client, kept)
