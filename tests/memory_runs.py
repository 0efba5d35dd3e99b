"""Whole federations in memory (fedchain/federation/in_memory.py): the server's protocol and
real clients in one process, every message framed as the wire carries it. For the end-to-end
tests whose point is what the rules make of the clients' rows, not the processes."""

from chain_helpers import SERVER_KEY, fixed_key

from fedchain.federation.client import FederatedClient
from fedchain.federation.in_memory import run_in_memory
from fedchain.federation.plan import RunPlan
from fedchain.learning.aggregation import FEDAVG
from fedchain.learning.dataset import Dataset
from fedchain.ledger.block import Block
from fedchain.settings import GENERATIONS, POPULATION
from fedchain.trust.keys import public_hex


def run_federation(
    tmp_path,
    datasets: dict[str, Dataset],
    *,
    rounds: int,
    seed: int = 7,
    aggregation: str = FEDAVG,
    parameters: dict[str, float] | None = None,
    said: list[str] | None = None,
) -> list[Block]:
    """Run the federation of DATASETS' clients (the command line's training settings, the
    seed from the server) to its closing block; each client's replica is TMP_PATH/NAME.jsonl
    and the server's chain TMP_PATH/chain.jsonl. Return the chain's blocks."""
    said = [] if said is None else said
    clients = [
        FederatedClient(
            name=name,
            data=data,
            seed=None,
            generations=GENERATIONS,
            population=POPULATION,
            replica=tmp_path / f"{name}.jsonl",
            say=said.append,
            key=fixed_key(name),
        )
        for name, data in datasets.items()
    ]
    plan = RunPlan(
        n_clients=len(clients),
        min_clients=len(clients),
        rounds=rounds,
        difficulty_bits=8,
        seed=seed,
        server_key=public_hex(SERVER_KEY),
        aggregation=aggregation,
        aggregation_parameters=parameters or {},
    )
    try:
        return run_in_memory(
            plan, SERVER_KEY, clients, chain_path=tmp_path / "chain.jsonl", say=said.append
        )
    finally:
        for client in clients:
            client.close()
