"""Scaffold end to end: a real server and real clients on rows split by a column (non-IID), and
peers that break the probe's part of the protocol."""

import numpy as np
import pytest
from client_processes import bundled_clients, split_by_bmi, split_client
from processes import run_blockchain_cli, start_server
from raw_peers import FEATURES, RawClient
from scaffold_peers import answer, next_of, update_with_gradient

from fedchain.learning.aggregation import FEDAVG, PROXIMAL, SCAFFOLD
from fedchain.learning.linear_model import fit_lstsq, mse
from fedchain.learning.partition import pool
from fedchain.learning.simulation import simulate
from fedchain.ledger.store import load_chain

ROUNDS = 5


def pooled_ratio(datasets, model):
    everything = pool(datasets.values())
    return mse(model, everything.X, everything.y) / mse(
        fit_lstsq(everything.X, everything.y), everything.X, everything.y
    )


def test_a_scaffold_run_on_non_iid_rows_reaches_the_pooled_fit_as_simulated(programs, tmp_path):
    datasets = split_by_bmi(tmp_path)
    server, port = start_server(
        programs, tmp_path, "--rounds", ROUNDS, "--seed", "7", "--aggregation", "scaffold"
    )
    clients = [split_client(programs, tmp_path, port, name) for name in datasets]
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    chain_path = tmp_path / "chain.jsonl"
    result = run_blockchain_cli("verify", chain_path)
    assert result.returncode == 0, result.stdout
    assert f"the run is complete ({ROUNDS} of {ROUNDS} rounds)" in result.stdout
    assert "scaffold: the least pooled MSE lies" in result.stdout
    for name in datasets:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain_path.read_bytes()
    blocks = load_chain(chain_path).blocks
    simulated = simulate(
        datasets, rounds=ROUNDS, run_seed=7, aggregation=SCAFFOLD, parameters={PROXIMAL: 0.3}
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


# What the third client does wrong, and the reason the server gives for leaving it out.
BAD_PEERS = {
    "no gradient": "sent its update without its gradient, which scaffold needs",
    "short gradient": f"sent a gradient of {len(FEATURES)} numbers, not {len(FEATURES) + 1}",
    "answers elsewhere": "sent a gradient for round 1 not signed by its key at the round's "
    "candidate",
    "leaves at the probe": "disconnected",
}


@pytest.mark.parametrize("bad", sorted(BAD_PEERS))
def test_a_peer_that_breaks_the_probe_is_left_out_and_the_round_goes_on(programs, tmp_path, bad):
    server, port = start_server(
        programs,
        tmp_path,
        "--rounds",
        "2",
        "--clients",
        "3",
        "--min-clients",
        "2",
        "--aggregation",
        "scaffold",
    )
    with RawClient(port, "cli3") as raw:
        raw.register()
        clients = bundled_clients(programs, tmp_path, port)
        assert raw.hear_welcome()["type"] == "train"
        zeros = np.zeros(len(FEATURES) + 1)
        if bad == "no gradient":
            raw.send(raw.update())
        elif bad == "short gradient":
            raw.send(update_with_gradient(raw, zeros[:-1]))
        else:
            raw.send(update_with_gradient(raw, zeros))
            probe = next_of(raw, "probe")
            if bad == "answers elsewhere":
                raw.send(answer(raw, probe, elsewhere=True))
            else:
                raw.sock.close()
        for program in [server, *clients]:
            assert program.finish() == 0, program.output
    assert f"cli3 is left out of the run: {BAD_PEERS[bad]}" in server.output
    assert "Traceback" not in server.output
    chain_path = tmp_path / "chain.jsonl"
    result = run_blockchain_cli("verify", chain_path)
    assert result.returncode == 0 and "the run is complete (2 of 2 rounds)" in result.stdout
    blocks = load_chain(chain_path).blocks
    assert blocks[1].cli == ("cli1", "cli2") and "cli3" in blocks[1].missing
    for i in (1, 2):
        assert (tmp_path / f"cli{i}.jsonl").read_bytes() == chain_path.read_bytes()


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
