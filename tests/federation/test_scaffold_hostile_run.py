"""Scaffold runs with real processes, probed where the landing tests did not reach: a client
whose columns come in another order than the run's, and peers that break the probe's part of
the protocol in other ways."""

import numpy as np
import pytest
from processes import run_blockchain_cli, start_server
from raw_peers import FEATURES, RawClient
from test_scaffold_run import answer, next_of, split_by_bmi, update_with_gradient

from fedchain.learning.aggregation import SCAFFOLD
from fedchain.learning.dataset import Dataset, save_dataset
from fedchain.learning.simulation import simulate
from fedchain.ledger.store import load_chain
from fedchain.wire.frames import encode_message


def test_a_client_whose_columns_come_in_another_order_trains_the_runs_columns(programs, tmp_path):
    datasets = split_by_bmi(tmp_path)
    # cli2 holds its columns reversed: it must match them to the run's by name, as a FedAvg
    # client does, in its corrected search as well as its plain one.
    reversed_ = Dataset(datasets["cli2"].feature_names[::-1], datasets["cli2"].X[:, ::-1],
                        datasets["cli2"].y)  # fmt: skip
    save_dataset(reversed_, tmp_path / "cli2.csv")
    rounds = 3
    server, port = start_server(programs, tmp_path, "--rounds", rounds, "--seed", "7",
                                "--aggregation", "scaffold")  # fmt: skip
    clients = [
        programs("client.py", "--name", name, "--data", tmp_path / f"{name}.csv", "--port", port,
                 "--replica", tmp_path / f"{name}.jsonl")
        for name in datasets
    ]  # fmt: skip
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    blocks = load_chain(tmp_path / "chain.jsonl").blocks
    assert blocks[0].feature_names == datasets["cli1"].feature_names  # the run's order
    simulated = simulate(datasets, rounds=rounds, run_seed=7, aggregation=SCAFFOLD)
    for block, expected in zip(blocks[1:-1], simulated, strict=True):
        for name in block.cli:
            assert block.client_model[name].model == expected.client_models[name], (
                f"round {block.index}: {name}'s model is not what its rows make"
            )
        assert block.server_model == expected.global_model


def three_clients(programs, tmp_path, *flags):
    """A scaffold server for three clients (quorum 2) and two real clients; the third is the
    test's raw peer."""
    server, port = start_server(programs, tmp_path, "--rounds", "2", "--clients", "3",
                                "--min-clients", "2", "--aggregation", "scaffold",
                                *flags)  # fmt: skip
    return server, port


# What the raw cli3 does wrong at the probe, and the reason the server gives for leaving it out.
AT_THE_PROBE = {
    "answers twice": "sent a second message in round 1",
    "sends its update again": "sent 'update' instead of its gradient",
    "answers for another round": "sent round 2's gradient in round 1",
}


@pytest.mark.parametrize("bad", sorted(AT_THE_PROBE))
def test_a_peer_that_misbehaves_at_the_probe_is_left_out(programs, tmp_path, bad):
    server, port = three_clients(programs, tmp_path)
    with RawClient(port, "cli3") as raw:
        raw.register()
        clients = [
            programs(f"client{i}.py", "--port", port, "--replica", tmp_path / f"cli{i}.jsonl")
            for i in (1, 2)
        ]  # fmt: skip
        assert raw.hear_welcome()["type"] == "train"
        update = update_with_gradient(raw, np.zeros(len(FEATURES) + 1))
        raw.send(update)
        probe = next_of(raw, "probe")
        if bad == "answers twice":
            frame = encode_message(answer(raw, probe))
            raw.sock.sendall(frame + frame)  # in one write: the server reads both at once
        elif bad == "sends its update again":
            raw.send(update)
        else:
            wrong = answer(raw, probe)
            wrong["round"] = 2
            raw.send(wrong)
        for program in [server, *clients]:
            assert program.finish() == 0, program.output
    assert f"cli3 is left out of the run: {AT_THE_PROBE[bad]}" in server.output
    assert "Traceback" not in server.output
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 0 and "the run is complete (2 of 2 rounds)" in result.stdout
    assert load_chain(tmp_path / "chain.jsonl").blocks[1].cli == ("cli1", "cli2")
