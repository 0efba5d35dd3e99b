"""The federated run end to end: a real server and real clients on 127.0.0.1."""

import contextlib
import os
import re
import socket
import stat
from pathlib import Path

import pandas as pd
from memory_runs import run_federation
from processes import ROOT, run_blockchain_cli, start_server

from fedchain import settings
from fedchain.cli.console import port_from_listening_line
from fedchain.learning.dataset import load_dataset
from fedchain.learning.simulation import simulate
from fedchain.ledger.block import TargetRecord
from fedchain.ledger.store import load_chain

ROUNDS = 3


def client_args(name: str, port: int, tmp_path: Path, *extra: str) -> list:
    return ["--port", port, "--replica", tmp_path / f"{name}.jsonl", *extra]


def check_finished_run(tmp_path: Path, server, clients) -> None:
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    chain_path = tmp_path / "chain.jsonl"
    blocks = load_chain(chain_path).blocks
    assert len(blocks) == ROUNDS + 2  # the genesis, the rounds, the closing block
    complete = f"valid: {ROUNDS + 2} blocks; the run is complete ({ROUNDS} of {ROUNDS} rounds)"
    result = run_blockchain_cli("verify", chain_path)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == complete
    for index in range(ROUNDS + 1):  # every block but the closing one, attested by both
        assert f"block {index}: " in result.stdout
    assert result.stdout.count("attested by cli1, cli2") == ROUNDS + 1
    assert server.output.rstrip().endswith(complete)
    for name in ("cli1", "cli2"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain_path.read_bytes()


def test_a_networked_run_gives_the_simulated_models_and_identical_replicas(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", ROUNDS, "--seed", "7")
    clients = [
        programs("client1.py", *client_args("cli1", port, tmp_path)),
        programs("client2.py", *client_args("cli2", port, tmp_path)),
    ]
    check_finished_run(tmp_path, server, clients)
    blocks = load_chain(tmp_path / "chain.jsonl").blocks
    # Every chain the server writes names what the run predicts, and in what unit.
    assert blocks[0].run.target == TargetRecord(settings.TARGET, settings.TARGET_UNIT)
    datasets = {f"cli{i}": load_dataset(ROOT / "data" / f"client{i}.csv") for i in (1, 2)}
    simulated = simulate(datasets, rounds=ROUNDS, run_seed=7)  # the clients took it from the server
    for block, expected in zip(blocks[1:-1], simulated, strict=True):
        assert block.cli == ("cli1", "cli2")
        assert block.server_model == expected.global_model  # bit for bit
        for name in block.cli:
            assert block.client_model[name].model == expected.client_models[name]
    # The metrics file: a row per round and client, matching the chain, read by plain pandas.
    metrics = pd.read_csv(tmp_path / "chain.metrics.csv")
    expected = [(b.index, name, b.hash) for b in blocks[1:-1] for name in b.cli]
    assert list(metrics[["round", "client", "block_hash"]].itertuples(index=False)) == expected
    assert (metrics["rows"] == 535).all() and metrics["test_mse"].notna().all()
    assert (metrics["local_mse_after"] <= metrics["local_mse_before"]).all()
    # One short line a round: the details go to the metrics file.
    rounds = [line for line in server.lines if line.startswith("round ")]
    assert len(rounds) == ROUNDS and all(len(line) <= 80 for line in rounds), rounds
    assert re.match(r"round 1/\d+: 2 of 2 clients, test MSE [\d.]+ \(R² [\d.]+\)", rounds[0])


def test_a_client_with_its_columns_in_another_order_joins_with_the_same_models(tmp_path):
    lines = (ROOT / "data" / "client2.csv").read_text().splitlines()
    reversed_rows = [",".join(line.split(",")[::-1]) for line in lines]
    (tmp_path / "reversed.csv").write_text("\n".join(reversed_rows) + "\n")
    datasets = {f"cli{i}": load_dataset(ROOT / "data" / f"client{i}.csv") for i in (1, 2)}
    joining = {"cli1": datasets["cli1"], "cli2": load_dataset(tmp_path / "reversed.csv")}
    blocks = run_federation(tmp_path, joining, rounds=2)  # in memory: the rules are the same
    simulated = simulate(datasets, rounds=2, run_seed=7)
    for block, expected in zip(blocks[1:-1], simulated, strict=True):
        # Weights in the run's column order, bit for bit as if the file had that order.
        assert block.client_model["cli2"].model == expected.client_models["cli2"]
        assert block.server_model == expected.global_model


@contextlib.contextmanager
def reserved_port():
    """A loopback port held for the server until it listens: bound here with SO_REUSEADDR but
    never listening, so clients are refused (and retry) while no other program can take it;
    the server's own bind, also with SO_REUSEADDR, shares it."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def test_clients_started_before_the_server_wait_for_it(programs, tmp_path):
    with reserved_port() as port:  # the clients must be told a port before the server exists
        clients = [
            programs("client1.py", *client_args("cli1", port, tmp_path)),
            programs("client2.py", *client_args("cli2", port, tmp_path)),
        ]
        server = programs(
            "server.py",
            "--port",
            port,
            "--chain",
            tmp_path / "chain.jsonl",
            "--difficulty",
            "8",
            "--rounds",
            ROUNDS,
        )
        server.wait_for(f"listening on 127.0.0.1:{port}")
    check_finished_run(tmp_path, server, clients)


def test_a_client_that_dies_and_stays_away_stops_the_run_with_a_valid_chain(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "50", "--rejoin-timeout-s", "2")
    survivor = programs("client1.py", *client_args("cli1", port, tmp_path))
    victim = programs("client2.py", *client_args("cli2", port, tmp_path))
    victim.wait_for(r"^block 2 verified")
    victim.kill()
    # Below its quorum the server waits for the client to come back, saying so, then stops.
    server.wait_for(r"^waiting: round \d+ has 1 of the 2 updates it needs")
    assert server.finish() == 1
    stopped = (
        "of the 2 clients it needs (--min-clients); none came back within 2 s "
        "(--rejoin-timeout-s): cli2 disconnected"
    )
    assert stopped in server.output
    assert "Traceback" not in server.output
    assert survivor.finish() == 1
    assert "the server stopped the run: round" in survivor.output and stopped in survivor.output
    assert "the server says: waiting: round" in survivor.output  # told, not left silent
    chain_path = tmp_path / "chain.jsonl"
    result = run_blockchain_cli("verify", chain_path)
    assert result.returncode == 3, result.stdout  # every block valid, the run unfinished
    blocks = load_chain(chain_path).blocks
    assert 3 <= len(blocks) < 51  # genesis and the rounds finished before the kill
    unfinished = f"incomplete: {len(blocks)} blocks verify, but the run planned 50 rounds"
    assert server.output.splitlines()[-1].startswith(unfinished)


def test_a_client_with_other_features_is_refused(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    odd = tmp_path / "odd.csv"
    odd.write_text("age,height,charges\n30,170,9.1\n40,180,9.5\n")
    stranger = programs(
        "client1.py", *client_args("odd", port, tmp_path), "--name", "odd", "--data", odd
    )
    assert stranger.finish() == 1
    assert "odd's columns differ from the run's: missing 'bmi'" in stranger.output
    assert "; extra 'height'" in stranger.output
    server.wait_for("refused")
    server.kill()


def test_a_client_with_a_bad_data_file_says_so_and_exits(programs, tmp_path):
    broken = tmp_path / "broken.csv"
    broken.write_text("age,charges\n30,x\n31,2\n")
    client = programs("client1.py", "--port", "9", "--data", broken)
    assert client.finish() == 2
    assert "line 2, column 'charges': 'x' is not a number" in client.output


def test_the_server_will_not_overwrite_an_existing_chain(programs, tmp_path):
    chain = tmp_path / "chain.jsonl"
    chain.write_text("precious\n")
    server = programs("server.py", "--port", "0", "--chain", chain)
    assert server.finish() == 2
    assert "already exists" in server.output
    assert chain.read_text() == "precious\n"


def test_a_run_nobody_joins_ends_on_time_and_leaves_no_chain_file(programs, tmp_path):
    server, _ = start_server(programs, tmp_path, "--join-timeout-s", "1")
    assert server.finish() == 1
    assert "run stopped: only 0 of 2 clients joined within 1 s" in server.output
    assert not (tmp_path / "chain.jsonl").exists()  # so the same command can simply be rerun


def test_a_client_that_leaves_before_the_run_can_come_back(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1")
    first_try = programs("client1.py", *client_args("cli1-first", port, tmp_path), "--name", "cli1")
    server.wait_for("cli1 joined")
    first_try.kill()
    server.wait_for("cli1 left before the run began")
    clients = [
        programs("client1.py", *client_args("cli1", port, tmp_path)),
        programs("client2.py", *client_args("cli2", port, tmp_path)),
    ]
    for program in [server, *clients]:
        assert program.finish() == 0, program.output


def test_a_full_disk_stops_the_run_cleanly_and_keeps_every_written_block(programs, tmp_path):
    # The genesis and a round block fit in 3,000 bytes; the next write fails as on a full disk.
    server = programs(
        "server.py",
        "--port",
        "0",
        "--chain",
        tmp_path / "chain.jsonl",
        "--difficulty",
        "8",
        "--rounds",
        "5",
        max_file_bytes=3000,
    )
    port = port_from_listening_line(server.wait_for(r"^listening on ").string)
    clients = [
        programs("client1.py", *client_args("cli1", port, tmp_path)),
        programs("client2.py", *client_args("cli2", port, tmp_path)),
    ]
    assert server.finish() == 1
    assert "run stopped: cannot write block" in server.output
    assert "Traceback" not in server.output
    for client in clients:
        assert client.finish() == 1
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 3, result.stdout + result.stderr  # valid, but unfinished
    assert 1 <= len(load_chain(tmp_path / "chain.jsonl").blocks) < 6


def test_a_client_whose_own_model_is_too_large_to_send_says_it_is_its_fault(programs, tmp_path):
    huge = tmp_path / "huge.csv"
    huge.write_text("x,charges\n1,5e120\n2,7e120\n3,6e120\n")
    server, port = start_server(programs, tmp_path, "--clients", "1", "--test", "")
    client = programs("client1.py", *client_args("cli1", port, tmp_path), "--data", huge)
    assert client.finish() == 1
    assert "our round 1 update cannot be sent" in client.output
    assert "broke the protocol" not in client.output
    assert server.finish() == 1 and "cli1 disconnected" in server.output


def test_a_chain_path_that_cannot_be_made_is_refused_at_start(programs, tmp_path):
    (tmp_path / "a-file").write_text("")
    server = programs("server.py", "--port", "0", "--chain", tmp_path / "a-file" / "chain.jsonl")
    assert server.finish() == 2
    assert "cannot make a folder for" in server.output


def test_quiet_programs_print_only_what_others_read_and_verbose_ones_more(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1", "-q")
    quiet = programs("client1.py", *client_args("cli1", port, tmp_path), "-q")
    verbose = programs("client2.py", *client_args("cli2", port, tmp_path), "-v")
    for program in (server, quiet, verbose):
        assert program.finish() == 0, program.output
    # The port first, for whoever started it, and where the chain went last: nothing else.
    assert server.lines[0].startswith("listening on ")
    assert server.lines[1:] == [f"chain: {tmp_path / 'chain.jsonl'}"]
    assert quiet.lines == []
    assert "cli2: the server sent 'train' while it was waiting for the next round" in (
        verbose.output
    )
    assert "run complete" in verbose.output


def test_a_difficulty_that_would_outlast_the_clients_wait_is_refused_at_start(programs, tmp_path):
    server = programs(
        "server.py", "--port", "0", "--chain", tmp_path / "chain.jsonl", "--difficulty", "40"
    )
    assert server.finish() == 2
    assert re.search(
        r"error: --difficulty 40 takes about \S+ s to mine a block here .*more than the "
        r"clients wait for the server's next message \(their --timeout-s, 300 s by default\)",
        server.output,
    ), server.output
    assert not (tmp_path / "chain.jsonl").exists()


def test_runs_under_a_permissive_umask_trust_the_files_they_made(programs, tmp_path):
    # The three terminals' defaults under `umask 000`: keys/ and what is in it are made private
    # all the same, so the second run reads back the keys and known_servers of the first.
    previous = os.umask(0)  # inherited by the programs started below
    try:
        for run in (1, 2):
            chain = tmp_path / f"chain{run}.jsonl"
            server, port = start_server(
                programs, tmp_path, "--clients", "1", "--rounds", "1", "--chain", chain
            )
            client = programs("client1.py", *client_args(f"cli1-{run}", port, tmp_path))
            assert client.finish() == 0, client.output
            assert server.finish() == 0, server.output
    finally:
        os.umask(previous)
    keys = tmp_path / "keys"
    assert len((keys / "known_servers").read_text().splitlines()) == 2  # a port a run
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("server.key", "cli1.key", "known_servers"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
