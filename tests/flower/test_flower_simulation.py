"""A whole run in Flower's simulation (`python -m fedchain.flower simulate`, Ray underneath):
its chain verifies with blockchain.py, and its models are the socket run's, bit for bit (the
in-memory run stands for the socket run here: test_federated_run.py shows the two equal)."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest
from in_process import run_main
from memory_runs import run_federation
from processes import ROOT

from fedchain.learning.dataset import load_dataset
from fedchain.ledger.block import TargetRecord
from fedchain.ledger.store import load_chain
from fedchain.settings import TARGET, TARGET_UNIT

ROUNDS, SEED, DIFFICULTY = 3, 7, 8
WAIT_S = 240  # Ray's start alone takes 5 s on a quiet machine


def simulate(tmp_path, *args):
    """`python -m fedchain.flower simulate ARGS` in its own session, which is killed whole
    when it ends, so nothing Flower or Ray started outlives the test."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fedchain.flower", "simulate", *map(str, args)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=WAIT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode, output


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flower")
    code, output = simulate(
        folder,
        "--rounds", ROUNDS, "--seed", SEED, "--difficulty", DIFFICULTY,
        "--chain", folder / "chain.jsonl", "--replicas", folder / "replicas",
        "--keys", folder / "keys",
    )  # fmt: skip
    return folder, code, output


def test_a_flower_simulation_writes_a_chain_that_blockchain_py_verifies(flower_run):
    folder, code, output = flower_run
    assert code == 0, output
    assert "valid: 5 blocks; the run is complete (3 of 3 rounds)" in output
    verified = run_main("blockchain.py", "verify", folder / "chain.jsonl")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Each client node kept a replica equal to the server's chain, verified block by block.
    replicas = sorted((folder / "replicas").glob("*.jsonl"))
    assert [r.name.split("-")[0] for r in replicas] == ["cli1", "cli2"]
    for replica in replicas:
        assert replica.read_bytes() == (folder / "chain.jsonl").read_bytes()
    # The tools treat it as any chain: its copies compare equal, at the work it was mined at.
    compared = run_main(
        "blockchain.py", "compare", "--min-difficulty", DIFFICULTY, folder / "chain.jsonl",
        replicas[0],
    )  # fmt: skip
    assert compared.returncode == 0, compared.stdout + compared.stderr


def test_a_flower_simulation_gives_the_socket_runs_models_bit_for_bit(flower_run, tmp_path):
    folder, code, output = flower_run
    assert code == 0, output
    flower = load_chain(folder / "chain.jsonl").blocks
    datasets = {f"cli{i}": load_dataset(ROOT / "data" / f"client{i}.csv") for i in (1, 2)}
    expected = run_federation(tmp_path, datasets, rounds=ROUNDS, seed=SEED)
    assert [b.server_model for b in flower] == [b.server_model for b in expected]
    assert [b.cli for b in flower] == [b.cli for b in expected]
    for ours, theirs in zip(flower[1:], expected[1:], strict=True):
        assert {n: u.model for n, u in ours.client_model.items()} == {
            n: u.model for n, u in theirs.client_model.items()
        }
    assert flower[0].run.target == TargetRecord(TARGET, TARGET_UNIT)


def test_simulate_refuses_a_chain_that_exists_before_starting_flower(tmp_path):
    (tmp_path / "chain.jsonl").write_text("")
    code, output = simulate(tmp_path, "--chain", tmp_path / "chain.jsonl")
    assert code == 2
    assert f"--chain {tmp_path / 'chain.jsonl'} exists" in output
