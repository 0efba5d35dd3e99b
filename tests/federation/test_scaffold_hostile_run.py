"""Scaffold runs probed where the landing tests did not reach: a client whose columns come in
another order than the run's (in memory), and real clients that miss a round or leave at the
probe and come back. The probe's rules are unit-tested on the protocol
(test_protocol_scaffold.py)."""

import itertools
import os
import signal

import numpy as np
from chain_helpers import fixed_key
from client_processes import split_by_bmi, split_client
from memory_runs import run_federation
from processes import run_blockchain_cli, start_server
from raw_peers import FEATURES, RawClient, write_key
from scaffold_peers import next_of, update_with_gradient

from fedchain.learning.aggregation import PROXIMAL, SCAFFOLD
from fedchain.learning.corrected_training import CorrectedProblem, gradient, train_corrected
from fedchain.learning.dataset import Dataset
from fedchain.learning.local_training import LocalProblem, derive_seed, train_locally
from fedchain.learning.scaffold import DEFAULT_PROXIMAL
from fedchain.learning.simulation import simulate
from fedchain.ledger.correction import global_gradient, probe_point
from fedchain.ledger.store import load_chain


def test_a_client_whose_columns_come_in_another_order_trains_the_runs_columns(tmp_path):
    datasets = split_by_bmi(tmp_path)
    # cli2 holds its columns reversed: it must match them to the run's by name, as a FedAvg
    # client does, in its corrected search as well as its plain one.
    reversed_ = Dataset(
        datasets["cli2"].feature_names[::-1], datasets["cli2"].X[:, ::-1], datasets["cli2"].y
    )
    rounds = 3
    blocks = run_federation(
        tmp_path,
        {"cli1": datasets["cli1"], "cli2": reversed_},
        rounds=rounds,
        aggregation=SCAFFOLD,
        parameters={PROXIMAL: DEFAULT_PROXIMAL},
    )
    assert blocks[0].feature_names == datasets["cli1"].feature_names  # the run's order
    simulated = simulate(datasets, rounds=rounds, run_seed=7, aggregation=SCAFFOLD)
    for block, expected in zip(blocks[1:-1], simulated, strict=True):
        for name in block.cli:
            assert block.client_model[name].model == expected.client_models[name], (
                f"round {block.index}: {name}'s model is not what its rows make"
            )
        assert block.server_model == expected.global_model


def split_in_three(tmp_path):
    """The bundled rows pooled, sorted by bmi and cut in three, one file a client."""
    return split_by_bmi(tmp_path, 3)


def replay(datasets, blocks, run_seed=7):
    """Train every client of every round block again, as the chain says who took part and
    from what: the models and gradients must be the chain's, bit for bit."""
    problems = {n: LocalProblem.from_data(d.X, d.y) for n, d in datasets.items()}
    for previous, block in itertools.pairwise(blocks[:-1]):
        start, correction = previous.server_model, global_gradient(previous)
        candidate = probe_point(block.cli, block.client_model)
        for name in block.cli:
            seed = derive_seed(run_seed, name, block.index)
            if correction is None:
                model = train_locally(problems[name], start, seed=seed)
            else:
                model = train_corrected(
                    CorrectedProblem(problems[name]), start, correction, seed=seed, proximal=0.3
                ).model
            update = block.client_model[name]
            assert update.model == model, f"round {block.index}: {name}'s model"
            assert update.gradient == tuple(map(float, gradient(problems[name], start)))
            assert update.probe_gradient == tuple(map(float, gradient(problems[name], candidate)))


def test_a_client_that_misses_a_round_comes_back_corrected_as_the_chain_says(programs, tmp_path):
    datasets = split_in_three(tmp_path)
    rounds = 6
    server, port = start_server(
        programs,
        tmp_path,
        "--rounds",
        rounds,
        "--seed",
        "7",
        "--clients",
        "3",
        "--min-clients",
        "2",
        "--aggregation",
        "scaffold",
    )

    def client(name):
        return split_client(programs, tmp_path, port, name)

    clients = {name: client(name) for name in datasets}
    clients["cli3"].wait_for(r"^block 1 verified")
    clients["cli3"].kill()
    server.wait_for(r"^round 2/")  # cli3 is out of round 2
    # cli1 is stopped until cli3 is back, so the run cannot end without it: the round under
    # way (2, or 3 if cli1 had sent its round 2 already) waits for cli1 (--round-timeout-s).
    stopped = clients["cli1"].process.pid
    os.kill(stopped, signal.SIGSTOP)
    try:
        clients["cli3"] = client("cli3")
        server.wait_for(r"^cli3 is back from ")
    finally:
        os.kill(stopped, signal.SIGCONT)
    for program in [server, *clients.values()]:
        assert program.finish(timeout_s=120) == 0, program.output
    assert "Traceback" not in server.output
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 0 and f"complete ({rounds} of {rounds} rounds)" in result.stdout
    blocks = load_chain(tmp_path / "chain.jsonl").blocks
    assert blocks[2].cli == ("cli1", "cli2") and "cli3" in blocks[2].missing
    assert "cli3" in blocks[-2].cli  # back, and trained with the correction
    replay(datasets, blocks)
    # With everyone there, the run is the simulation's.
    assert (
        blocks[1].server_model
        == simulate(datasets, rounds=1, run_seed=7, aggregation=SCAFFOLD)[0].global_model
    )


def test_a_client_that_leaves_at_the_probe_below_the_quorum_is_waited_for(programs, tmp_path):
    datasets = split_in_three(tmp_path)
    (tmp_path / "keys").mkdir()
    write_key(tmp_path / "keys" / "cli3.key", fixed_key("cli3"))
    server, port = start_server(
        programs,
        tmp_path,
        "--rounds",
        "3",
        "--seed",
        "7",
        "--clients",
        "3",
        "--aggregation",
        "scaffold",
        "--rejoin-timeout-s",
        "60",
    )
    with RawClient(port, "cli3") as raw:
        raw.register()
        clients = [split_client(programs, tmp_path, port, name) for name in ("cli1", "cli2")]
        assert raw.hear_welcome()["type"] == "train"
        raw.send(update_with_gradient(raw, np.zeros(len(FEATURES) + 1)))
        next_of(raw, "probe")
    # Round 1 is short of its quorum (all three) now: cli3 comes back, for real, and the round
    # trains it and asks everyone again.
    server.wait_for(r"waiting for clients to come back|waiting: round 1 has")
    clients.append(split_client(programs, tmp_path, port, "cli3"))
    for program in [server, *clients]:
        assert program.finish(timeout_s=120) == 0, program.output
    assert "Traceback" not in server.output
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 0 and "complete (3 of 3 rounds)" in result.stdout
    blocks = load_chain(tmp_path / "chain.jsonl").blocks
    assert all(block.cli == ("cli1", "cli2", "cli3") for block in blocks[1:-1])
    simulated = simulate(datasets, rounds=3, run_seed=7, aggregation=SCAFFOLD)
    assert [b.server_model for b in blocks[1:-1]] == [r.global_model for r in simulated]
