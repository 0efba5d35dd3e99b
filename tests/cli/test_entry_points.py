"""The programs a user runs from the top of the checkout: the model command, the demo."""

import re
import shutil
import subprocess
import sys

import pandas as pd
from chain_helpers import FEATURES, build_chain
from processes import ROOT, run_script

import model
from fedchain.learning.aggregation import feature_scale, fedavg
from fedchain.learning.dataset import load_dataset
from fedchain.ledger.block import FORMAT_SCALED, TARGET_TWIN
from fedchain.ledger.store import ChainWriter, block_to_json, load_chain


def write_chain(path, blocks) -> None:
    with ChainWriter(path) as writer:
        for block in blocks:
            writer.append(block)


def test_model_py_offers_the_model_and_fedavg():
    assert model.fedavg is fedavg
    a, b = model.LinearModel([1.0, 2.0], 0.5), model.LinearModel([3.0, 0.0], 1.5)
    assert fedavg([(a, 100), (b, 300)]) == model.LinearModel([2.5, 0.5], 1.25)


def test_model_py_prints_a_verified_chains_global_model(tmp_path):
    blocks = build_chain(rounds=2)
    write_chain(tmp_path / "chain.jsonl", blocks)
    result = run_script("model.py", tmp_path / "chain.jsonl")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"global model of round 2 (block hash {blocks[2].hash[:16]}")
    final = blocks[2].server_model
    for name, weight, line in zip(FEATURES, final.weights, lines[1:], strict=False):
        assert re.fullmatch(rf"\s+{name}\s+{re.escape(f'{weight:+.6g}')}", line)
    assert lines[-1].split()[-1] == f"{final.bias:+.6g}"
    first = run_script("model.py", tmp_path / "chain.jsonl", "--round", "0")
    assert first.stdout.splitlines()[0].startswith("global model of round 0")
    assert run_script("model.py", tmp_path / "chain.jsonl", "--round", "3").returncode == 1


def test_model_py_refuses_a_chain_that_does_not_verify(tmp_path):
    blocks = build_chain(rounds=2)
    write_chain(tmp_path / "chain.jsonl", blocks)
    lines = (tmp_path / "chain.jsonl").read_text().splitlines()
    record = block_to_json(blocks[1]).replace('"bias":', '"bias":1', 1)  # one digit more
    assert record != lines[1]
    (tmp_path / "chain.jsonl").write_text("\n".join([lines[0], record, lines[2]]) + "\n")
    result = run_script("model.py", tmp_path / "chain.jsonl")
    assert result.returncode == 1 and "does not verify: " in result.stderr
    assert result.stdout == ""


def test_the_demo_runs_the_federation_and_ends_with_the_comparison():
    result = run_script("demo.py", "--rounds", "2", "--difficulty", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[server] valid: 4 blocks; the run is complete (2 of 2 rounds)" in out
    assert "note:" not in out + result.stderr  # the server's own key is pinned: no caveat
    assert "cli1's replica is the server's chain, byte for byte" in out
    assert "cli2's replica is the server's chain, byte for byte" in out
    ratio = float(re.search(r"federated / central MSE on the pooled client rows: ([\d.]+)", out)[1])
    assert 1.0 <= ratio <= 1.001
    chain = ROOT / re.search(r"the chain is (\S+)$", out.rstrip())[1]
    try:
        assert len(load_chain(chain).blocks) == 4  # the genesis, two rounds, the closing block
        figure = chain.with_name("convergence.png")
        assert f"the convergence figure: {figure.relative_to(ROOT)}" in out
        assert figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        metrics = pd.read_csv(chain.with_name("chain.metrics.csv"))
        assert list(metrics["round"]) == [1, 1, 2, 2]
    finally:
        shutil.rmtree(chain.parent)  # the demo keeps its run folder for a person; a test does not


def test_model_py_shows_the_last_rounds_model_not_the_closing_block(tmp_path):
    blocks = build_chain(rounds=2, closed=True)
    write_chain(tmp_path / "chain.jsonl", blocks)
    result = run_script("model.py", tmp_path / "chain.jsonl")
    assert result.stdout.startswith(f"global model of round 2 (block hash {blocks[2].hash[:16]}")
    beyond = run_script("model.py", tmp_path / "chain.jsonl", "--round", "3")
    assert beyond.returncode == 1 and "has rounds 0..2, not 3" in beyond.stderr


def test_the_chain_tool_stops_quietly_when_its_reader_goes_away(tmp_path):
    # 500 rounds print far more than a pipe holds (about 130 KB against 64 KB), so the writer
    # meets the closed end; were it all to fit, the run would end with a note on stderr.
    write_chain(tmp_path / "chain.jsonl", build_chain(rounds=500, closed=True))
    process = subprocess.Popen(
        [sys.executable, ROOT / "blockchain.py", "show", tmp_path / "chain.jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0 and errors == b"", errors.decode()


def test_the_poisoning_demo_shows_krum_leaving_the_attacker_out():
    result = run_script(
        "demo.py",
        "--clients",
        "5",
        "--poison",
        "1",
        "--aggregation",
        "krum",
        "--rounds",
        "3",
        "--difficulty",
        "8",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[cli5] round 1: ATTACKING (--poison scale=-10)" in out
    assert "[server] valid: 5 blocks; the run is complete (3 of 3 rounds)" in out
    for index in (1, 2, 3):
        assert f"block {index}: attacker cli5 sent" in out
    assert out.count("krum left out cli5") == 3
    ratio = float(re.search(r"federated / central MSE on the pooled client rows: ([\d.]+)", out)[1])
    assert 1.0 <= ratio <= 1.01
    chain_path = ROOT / re.search(r"the chain is (\S+)$", out.rstrip())[1]
    # Krum's distances are in the scale the server took from its held-out rows (the bundled
    # test.csv), recorded in the genesis, which every client and verify recomputed with.
    genesis = load_chain(chain_path).blocks[0]
    test = load_dataset(ROOT / "data" / "test.csv").in_order(genesis.feature_names)
    assert genesis.version == TARGET_TWIN[FORMAT_SCALED] and genesis.scale == feature_scale(test.X)
    shutil.rmtree(chain_path.parent)


def demo_ratio(*args: str) -> float:
    """The demo's federated / central MSE on the pooled rows, its run folder removed."""
    result = run_script("demo.py", *args, "--difficulty", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    shutil.rmtree((ROOT / re.search(r"the chain is (\S+)$", out.rstrip())[1]).parent)
    return float(re.search(r"federated / central MSE on the pooled client rows: ([\d.]+)", out)[1])


def test_the_non_iid_demo_shows_the_drift_and_scaffold_removing_it():
    split = ("--sort-by", "bmi", "--rounds", "6")
    assert demo_ratio(*split) > 1.001  # FedAvg: short of the pooled fit
    assert demo_ratio(*split, "--aggregation", "scaffold") <= 1.001


def test_a_rule_that_needs_more_clients_than_a_round_holds_is_refused_at_start(tmp_path):
    result = run_script(
        "server.py",
        "--aggregation",
        "krum",
        "--clients",
        "4",
        "--port",
        "0",
        "--chain",
        tmp_path / "chain.jsonl",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert (
        "--aggregation krum with --byzantine 1 needs at least 5 clients a round, but "
        "--clients is 4" in result.stderr
    )
    result = run_script("server.py", "--byzantine", "1", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--byzantine is for a robust --aggregation" in result.stderr
    result = run_script("server.py", "--proximal", "1", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--proximal is for --aggregation scaffold" in result.stderr
    result = run_script("server.py", "--aggregation", "scaffold", "--proximal", "0", cwd=tmp_path)
    assert result.returncode == 2 and "must be a number in [1e-06, 1e+06]" in result.stderr
    assert not (tmp_path / "chain.jsonl").exists()
