"""The federation with no network: the server's protocol driving the real clients in memory
(federation/in_memory.py). The rules are the protocol's, so what this shows of them holds over
TCP too; the network run is tested against the same simulation in test_federated_run.py."""

import pytest
from chain_helpers import CLIENT_KEYS, SERVER_KEY
from processes import ROOT

from fedchain.federation.client import FederatedClient
from fedchain.federation.in_memory import run_in_memory
from fedchain.federation.plan import RunPlan
from fedchain.federation.server import RunAborted
from fedchain.learning.aggregation import FEDAVG, PROXIMAL, SCAFFOLD
from fedchain.learning.dataset import load_dataset
from fedchain.learning.simulation import simulate
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.store import load_chain
from fedchain.trust.keys import public_hex

DATASETS = {f"cli{i}": load_dataset(ROOT / "data" / f"client{i}.csv") for i in (1, 2)}


def clients(tmp_path, said):
    return [
        FederatedClient(
            name=name,
            data=data,
            seed=None,  # from the server, as client1.py and client2.py take it
            generations=300,
            population=24,
            replica=tmp_path / f"{name}.jsonl",
            say=said.append,
            key=CLIENT_KEYS[name],
        )
        for name, data in DATASETS.items()
    ]


def plan(rounds: int, aggregation: str = FEDAVG, **parameters: float) -> RunPlan:
    return RunPlan(
        n_clients=2,
        min_clients=2,
        rounds=rounds,
        difficulty_bits=8,
        seed=7,
        server_key=public_hex(SERVER_KEY),
        aggregation=aggregation,
        aggregation_parameters=parameters,
    )


@pytest.mark.parametrize(
    ("aggregation", "parameters"), [(FEDAVG, {}), (SCAFFOLD, {PROXIMAL: 1.0})], ids=str
)
def test_an_in_memory_run_gives_the_simulated_models_and_identical_replicas(
    tmp_path, aggregation, parameters
):
    said = []
    chain_path = tmp_path / "chain.jsonl"
    members = clients(tmp_path, said)
    blocks = run_in_memory(
        plan(3, aggregation, **parameters),
        SERVER_KEY,
        members,
        chain_path=chain_path,
        say=said.append,
    )
    for client in members:
        client.close()
    assert load_chain(chain_path).blocks == blocks
    assert verify_chain(blocks).closed
    simulated = simulate(
        DATASETS, rounds=3, run_seed=7, aggregation=aggregation, parameters=parameters
    )
    for block, expected in zip(blocks[1:-1], simulated, strict=True):
        assert block.cli == ("cli1", "cli2")
        assert block.server_model == expected.global_model  # bit for bit
    for name in DATASETS:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain_path.read_bytes()
    assert [line for line in said if line.startswith("closing block")] == [
        "closing block mined: 2 clients attest the last round"
    ]


def test_a_client_that_fails_leaves_the_run_and_a_round_short_of_its_quorum_stops_it(tmp_path):
    said = []
    members = clients(tmp_path, said)
    members[1].min_difficulty = 20  # refuses the genesis: it leaves before the first round
    with pytest.raises(RunAborted, match=r"round 1 cannot go on with 0 of the 2 clients"):
        run_in_memory(
            plan(2), SERVER_KEY, members, chain_path=tmp_path / "chain.jsonl", say=said.append
        )
    assert any("cli2 is left out of the run: disconnected" in line for line in said), said
