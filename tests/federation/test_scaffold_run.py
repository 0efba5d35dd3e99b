"""Scaffold end to end: the federation on rows split by a column (non-IID), and a real server
killed mid-run with real clients. The probe's rules, and peers that break them, are unit-tested
on the protocol (test_protocol_scaffold.py)."""

from client_processes import split_by_bmi, split_client
from in_process import run_main
from memory_runs import run_federation
from processes import run_blockchain_cli, start_server

from fedchain.learning.aggregation import FEDAVG, PROXIMAL, SCAFFOLD
from fedchain.learning.linear_model import fit_lstsq, mse
from fedchain.learning.partition import pool
from fedchain.learning.scaffold import DEFAULT_PROXIMAL
from fedchain.learning.simulation import simulate
from fedchain.ledger.store import load_chain

ROUNDS = 5


def pooled_ratio(datasets, model):
    everything = pool(datasets.values())
    return mse(model, everything.X, everything.y) / mse(
        fit_lstsq(everything.X, everything.y), everything.X, everything.y
    )


def test_a_scaffold_run_on_non_iid_rows_reaches_the_pooled_fit_as_simulated(tmp_path):
    # In memory: the rules are the network's by construction; the process run is the resume
    # test below.
    datasets = split_by_bmi(tmp_path)
    parameters = {PROXIMAL: DEFAULT_PROXIMAL}
    run_federation(tmp_path, datasets, rounds=ROUNDS, aggregation=SCAFFOLD, parameters=parameters)
    chain_path = tmp_path / "chain.jsonl"
    result = run_main("blockchain.py", "verify", chain_path)
    assert result.returncode == 0, result.stdout
    assert f"the run is complete ({ROUNDS} of {ROUNDS} rounds)" in result.stdout
    assert "scaffold: the least pooled MSE lies" in result.stdout
    for name in datasets:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain_path.read_bytes()
    blocks = load_chain(chain_path).blocks
    simulated = simulate(
        datasets, rounds=ROUNDS, run_seed=7, aggregation=SCAFFOLD, parameters=parameters
    )
    for block, expected in zip(blocks[1:-1], simulated, strict=True):
        assert block.server_model == expected.global_model  # bit for bit
        assert block.search == expected.search.as_record()
        for name in block.cli:
            assert block.client_model[name].model == expected.client_models[name]
    # The drift FedAvg leaves, and scaffold removes.
    fedavg = simulate(datasets, rounds=ROUNDS, run_seed=7, aggregation=FEDAVG)
    assert pooled_ratio(datasets, fedavg[-1].global_model) > 1.001
    assert pooled_ratio(datasets, blocks[-1].server_model) <= 1.001


def test_a_scaffold_server_killed_mid_run_resumes_with_the_same_clients(programs, tmp_path):
    datasets = split_by_bmi(tmp_path)
    rounds = 6
    flags = (
        "--rounds",
        rounds,
        "--seed",
        "7",
        "--aggregation",
        "scaffold",
        "--resume",
        "--rejoin-timeout-s",
        "60",
    )
    server, port = start_server(programs, tmp_path, *flags)
    clients = [split_client(programs, tmp_path, port, name) for name in datasets]
    chain_path = tmp_path / "chain.jsonl"
    for after in (2, 4):  # killed twice, each time after a round, and started again
        server.wait_for(rf"^round {after}/{rounds}: ")
        server.process.kill()
        server.process.wait()
        server = programs(
            "server.py", "--port", port, "--chain", chain_path, "--difficulty", "8", *flags
        )
        server.wait_for(r"^resuming the run of .* after block \d+")
    for program in [server, *clients]:
        assert program.finish(timeout_s=120) == 0, program.output
    result = run_blockchain_cli("verify", chain_path)
    assert result.returncode == 0 and f"complete ({rounds} of {rounds} rounds)" in result.stdout
    for name in datasets:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain_path.read_bytes()
    # The resumed rounds follow the steps the chain recorded: the same models as one long run.
    blocks = load_chain(chain_path).blocks
    simulated = simulate(datasets, rounds=rounds, run_seed=7, aggregation=SCAFFOLD)
    assert [b.server_model for b in blocks[1:-1]] == [r.global_model for r in simulated]
