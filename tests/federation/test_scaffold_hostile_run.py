"""Scaffold runs with real processes, probed where the landing tests did not reach: a client
whose columns come in another order than the run's, and peers that break the probe's part of
the protocol in other ways."""

import itertools
import os
import signal

import numpy as np
import pytest
from chain_helpers import fixed_key
from client_processes import bundled_clients, split_by_bmi, split_client
from processes import run_blockchain_cli, start_server
from raw_peers import FEATURES, RawClient, write_key
from scaffold_peers import answer, next_of, update_with_gradient
from wire_helpers import receive

from fedchain.learning.aggregation import SCAFFOLD
from fedchain.learning.corrected_training import CorrectedProblem, gradient, train_corrected
from fedchain.learning.dataset import Dataset, save_dataset
from fedchain.learning.local_training import LocalProblem, derive_seed, train_locally
from fedchain.learning.simulation import simulate
from fedchain.ledger.correction import global_gradient, probe_point
from fedchain.ledger.store import load_chain, updates_from_json
from fedchain.wire.frames import encode_message


def test_a_client_whose_columns_come_in_another_order_trains_the_runs_columns(programs, tmp_path):
    datasets = split_by_bmi(tmp_path)
    # cli2 holds its columns reversed: it must match them to the run's by name, as a FedAvg
    # client does, in its corrected search as well as its plain one.
    reversed_ = Dataset(
        datasets["cli2"].feature_names[::-1], datasets["cli2"].X[:, ::-1], datasets["cli2"].y
    )
    save_dataset(reversed_, tmp_path / "cli2.csv")
    rounds = 3
    server, port = start_server(
        programs, tmp_path, "--rounds", rounds, "--seed", "7", "--aggregation", "scaffold"
    )
    clients = [split_client(programs, tmp_path, port, name) for name in datasets]
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
        *flags,
    )
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
        clients = bundled_clients(programs, tmp_path, port)
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


def test_a_client_that_logs_in_again_at_the_probe_waits_for_the_next_round(programs, tmp_path):
    # Back during a round that still has its quorum, a client takes part from the next one: a
    # probe asked again must not train it in this one, or by logging in again at every probe
    # it would hold the round forever.
    server, port = three_clients(programs, tmp_path)
    with RawClient(port, "cli3") as raw:
        raw.register()
        clients = bundled_clients(programs, tmp_path, port)
        assert raw.hear_welcome()["type"] == "train"
        raw.send(update_with_gradient(raw, np.zeros(len(FEATURES) + 1)))
        next_of(raw, "probe")
        with RawClient(port, "cli3") as again:
            again.register()
            message = again.hear_welcome()
            while message["type"] == "waiting":
                message = receive(again.sock)
            assert message["type"] == "block", f"round 1 sent cli3 a {message['type']!r}"
        for program in [server, *clients]:
            assert program.finish() == 0, program.output
    assert "cli3 is left out of the run: logged in again on a new connection" in server.output
    blocks = load_chain(tmp_path / "chain.jsonl").blocks
    assert blocks[1].cli == ("cli1", "cli2")
    assert blocks[1].missing["cli3"].startswith("came back during round 1; in from round 2")


# A message out of place in the update phase, and the reason the server gives for leaving the
# sender out.
IN_THE_UPDATE_PHASE = {
    "fedavg": ("an update with a gradient", "sent a gradient, which a fedavg run does not take"),
    "scaffold": ("a gradient instead", "sent 'gradient' instead of its update"),
}


@pytest.mark.parametrize("rule", sorted(IN_THE_UPDATE_PHASE))
def test_a_gradient_out_of_place_is_refused(programs, tmp_path, rule):
    server, port = start_server(
        programs,
        tmp_path,
        "--rounds",
        "1",
        "--clients",
        "3",
        "--min-clients",
        "2",
        "--aggregation",
        rule,
    )
    with RawClient(port, "cli3") as raw:
        raw.register()
        clients = bundled_clients(programs, tmp_path, port)
        train = raw.hear_welcome()
        assert train["type"] == "train"
        if rule == "fedavg":
            raw.send(update_with_gradient(raw, np.zeros(len(FEATURES) + 1)))
        else:
            raw.send(answer(raw, {"round": 1, "weights": train["weights"], "bias": 0.0}))
        for program in [server, *clients]:
            assert program.finish() == 0, program.output
    assert f"cli3 is left out of the run: {IN_THE_UPDATE_PHASE[rule][1]}" in server.output
    assert "Traceback" not in server.output


def test_a_round_that_loses_clients_at_two_probes_stops_the_run(programs, tmp_path):
    # cli3 leaves at the first probe and cli4 at the second: the clients would answer no third,
    # so the server stops the run, saying why, rather than ask for one.
    server, port = start_server(
        programs,
        tmp_path,
        "--rounds",
        "2",
        "--clients",
        "4",
        "--min-clients",
        "2",
        "--aggregation",
        "scaffold",
    )
    with RawClient(port, "cli3") as cli3, RawClient(port, "cli4") as cli4:
        cli3.register()
        cli4.register()
        clients = bundled_clients(programs, tmp_path, port)
        for raw in (cli3, cli4):
            assert raw.hear_welcome()["type"] == "train"
            raw.send(update_with_gradient(raw, np.zeros(len(FEATURES) + 1)))
        next_of(cli3, "probe")
        cli3.sock.close()
        first = next_of(cli4, "probe")
        assert first["left"] == []
        cli4.send(answer(cli4, first))
        second = next_of(cli4, "probe")
        assert second["left"] == ["cli3"]
        assert list(updates_from_json(second["updates"])) == ["cli1", "cli2", "cli4"]
        cli4.sock.close()
        for program in [server, *clients]:
            assert program.finish() == 1, program.output
    stopped = "round 1 lost clients at 2 probes; a client answers no more probes a round"
    assert stopped in server.output
    assert all(stopped in client.output for client in clients)
    assert "Traceback" not in server.output
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 3 and "incomplete" in result.stdout
