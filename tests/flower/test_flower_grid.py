"""The ServerApp's transport (flower/grid_driver.py) on a Grid in this process (flower_grid.py):
honest nodes make the chain the in-memory run makes, and hostile or broken ones are refused or
left out, with a reason, without crashing the server or stalling the run."""

from flower_grid import FakeGrid, fast_run, honest_nodes, serve

from fedchain.federation.client import FederatedClient
from fedchain.federation.in_memory import run_in_memory
from fedchain.federation.plan import RunPlan
from fedchain.flower.config import bundled_rows
from fedchain.learning.dataset import load_dataset
from fedchain.ledger.report import Verdict, report_chain
from fedchain.ledger.store import load_chain
from fedchain.trust.keys import load_or_create_key, public_hex


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


def test_honest_nodes_make_a_valid_chain_equal_to_the_in_memory_runs(tmp_path):
    run = fast_run(tmp_path)
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
