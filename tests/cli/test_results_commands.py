"""The result of a real run, used: `blockchain.py export` and `plot`, `model.py predict` and
`score`, and the README's notebook example, all on the chain a real server and clients wrote."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from in_process import run_main
from processes import ROOT, WAIT_S, Program, run_script

from fedchain.cli.console import port_from_listening_line
from fedchain.learning.linear_model import mse, r2
from fedchain.ledger.store import block_to_json, load_chain

TEST_CSV = ROOT / "data" / "test.csv"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A folder holding the chain.jsonl of a real 5-round run of the bundled clients (the
    defaults, so the in-process simulation gives the same models), at difficulty 8."""
    folder = tmp_path_factory.mktemp("run")
    started = []
    try:
        server = Program(
            "server.py",
            "--port",
            "0",
            "--difficulty",
            "8",
            "--chain",
            folder / "chain.jsonl",
            cwd=folder,
        )
        started.append(server)
        port = port_from_listening_line(server.wait_for(r"^listening on ").string)
        for script in ("client1.py", "client2.py"):
            started.append(Program(script, "--port", port, cwd=folder))
        codes = [program.finish() for program in started]
        assert codes == [0, 0, 0], "\n\n".join(program.output for program in started)
    finally:
        for program in started:
            program.kill()
            program.process.stdout.close()
    return folder


@pytest.fixture
def chain(run, tmp_path):
    """A copy of the run's chain, for a test to keep or to spoil."""
    return shutil.copy(run / "chain.jsonl", tmp_path / "chain.jsonl")


def last_round_block(path):
    return [block for block in load_chain(path).blocks if block.cli][-1]


def test_export_then_predict_gives_the_chains_final_model_applied_in_numpy(chain, tmp_path):
    exported = run_main("blockchain.py", "export", chain, "-o", tmp_path / "model.json")
    assert exported.returncode == 0, exported.stderr
    final, genesis = last_round_block(chain), load_chain(chain).blocks[0]
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["round"] == 5 and record["block_hash"] == final.hash
    assert record["genesis_hash"] == genesis.hash and record["target"] == "charges"
    assert record["feature_names"] == list(final.feature_names)
    assert exported.stdout.startswith("wrote ") and final.hash[:16] in exported.stdout

    # The rows' columns in another order, the target among them: matched by name.
    rows = pd.read_csv(TEST_CSV)
    rows[rows.columns[::-1]].to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "predictions.csv"
    predicted = run_main(
        "model.py",
        "predict",
        "--model",
        tmp_path / "model.json",
        "--data",
        tmp_path / "rows.csv",
        "-o",
        out,
    )
    assert predicted.returncode == 0, predicted.stderr
    # Row-major, as numpy builds an array of rows (a DataFrame's columns come out column-major,
    # and BLAS may add a product in another order then, a last bit apart).
    X = np.ascontiguousarray(rows[list(final.feature_names)].to_numpy())
    expected = X @ final.server_model.weights + final.server_model.bias
    got = pd.read_csv(out)
    assert list(got.columns) == ["predicted_charges"]
    assert np.array_equal(got["predicted_charges"].to_numpy(), expected)  # bit for bit
    # Straight from the chain to a real process's stdout, the same bytes.
    direct = run_script("model.py", "predict", "--chain", chain, "--data", tmp_path / "rows.csv")
    assert direct.returncode == 0 and direct.stdout == out.read_text()


def test_score_prints_mse_and_r2_on_the_rows(chain, tmp_path):
    run_main("blockchain.py", "export", chain, "-o", tmp_path / "model.json")
    scored = run_main("model.py", "score", "--model", tmp_path / "model.json", "--data", TEST_CSV)
    assert scored.returncode == 0, scored.stderr
    model = last_round_block(chain).server_model
    rows = pd.read_csv(TEST_CSV)
    X = rows.drop(columns="charges").to_numpy()  # the bundled files are in the chain's order
    y = rows["charges"].to_numpy()
    found = dict(re.findall(r"^(MSE|R²)\s+(\S+)$", scored.stdout, re.MULTILINE))
    assert float(found["MSE"]) == pytest.approx(mse(model, X, y), rel=1e-5)
    assert float(found["R²"]) == pytest.approx(r2(model, X, y), rel=1e-5)
    assert scored.stdout.startswith("268 rows of ")


@pytest.mark.parametrize("command", ["score", "predict"])
def test_rows_too_large_are_refused_naming_file_line_and_column(chain, tmp_path, command):
    rows = pd.read_csv(TEST_CSV)
    rows.loc[6, "bmi"] = 1e300  # the file's line 8: the header is line 1
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = run_main("model.py", command, "--chain", chain, "--data", tmp_path / "rows.csv")
    assert result.returncode == 2 and result.stdout == ""
    assert f"{tmp_path / 'rows.csv'}: line 8, column 'bmi'" in result.stderr
    assert "inf" not in result.stderr and "Warning" not in result.stderr


def test_score_on_a_constant_target_says_r2_is_undefined(chain, tmp_path):
    rows = pd.read_csv(TEST_CSV).head(3).assign(charges=9.0)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = run_main("model.py", "score", "--chain", chain, "--data", tmp_path / "rows.csv")
    assert result.returncode == 0, result.stderr
    assert "R²  undefined (the target is constant)" in result.stdout


def test_predict_refuses_rows_missing_the_models_columns_naming_them(chain, tmp_path):
    rows = pd.read_csv(TEST_CSV).drop(columns=["bmi", "OHE_yes"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = run_main("model.py", "predict", "--chain", chain, "--data", tmp_path / "rows.csv")
    assert result.returncode == 2 and result.stdout == ""
    assert "the model's column(s) 'bmi', 'OHE_yes' are missing" in result.stderr
    no_target = tmp_path / "features.csv"
    pd.read_csv(TEST_CSV).drop(columns="charges").to_csv(no_target, index=False)
    assert run_main("model.py", "predict", "--chain", chain, "--data", no_target).returncode == 0
    scored = run_main("model.py", "score", "--chain", chain, "--data", no_target)
    assert scored.returncode == 2 and "no target column 'charges' to score against" in scored.stderr


def test_export_refuses_a_chain_that_does_not_verify(chain, tmp_path):
    blocks = load_chain(chain).blocks
    lines = chain.read_text().splitlines()
    lines[3] = block_to_json(blocks[3]).replace('"bias":', '"bias":1', 1)  # one digit more
    chain.write_text("\n".join(lines) + "\n")
    result = run_main("blockchain.py", "export", chain, "-o", tmp_path / "model.json")
    assert result.returncode == 1 and result.stdout == ""
    assert re.fullmatch(r"error: \S+ does not verify: block 3: [^\n]+\n", result.stderr)
    assert not (tmp_path / "model.json").exists()
    spoiled = run_main("model.py", "predict", "--chain", chain, "--data", TEST_CSV)
    assert spoiled.returncode == 1 and "does not verify" in spoiled.stderr


def test_a_bad_model_file_or_round_is_refused(chain, tmp_path):
    beyond = run_main("blockchain.py", "export", chain, "--round", "6")
    assert beyond.returncode == 1 and "has rounds 0..5, not 6" in beyond.stderr
    (tmp_path / "model.json").write_text('{"format": "fedchain-model/1"}')
    result = run_main("model.py", "score", "--model", tmp_path / "model.json", "--data", TEST_CSV)
    assert result.returncode == 1 and "model.json: lacks bias" in result.stderr
    first = json.loads(run_main("blockchain.py", "export", chain, "--round", "1").stdout)
    assert first["round"] == 1


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def plot(*args) -> subprocess.CompletedProcess:
    """blockchain.py plot ARGS, in process: what it draws, refuses and says."""
    return run_main("blockchain.py", "plot", *args)


def plot_without_display(*args) -> subprocess.CompletedProcess:
    """blockchain.py plot ARGS in a process of its own with no display, and an interactive
    backend asked for: the figure must be drawn off-screen all the same."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    return subprocess.run(
        [sys.executable, ROOT / "blockchain.py", "plot", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=env,
    )


def test_plot_writes_a_png_of_the_expected_size_without_a_display(chain, tmp_path):
    result = plot_without_display(chain, "-o", tmp_path / "convergence.png")
    assert result.returncode == 0, result.stderr
    assert png_size(tmp_path / "convergence.png") == (1200, 500)
    assert result.stdout == f"wrote {tmp_path / 'convergence.png'}: 5 rounds, 2 clients\n"


def test_plot_writes_png_bytes_under_a_png_name_and_refuses_any_other_name(chain, tmp_path):
    drawn = plot(chain, "-o", tmp_path / "figure.PNG")
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "figure.PNG").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("figure.jpg", "figure.pdf", "figure"):
        refused = plot(chain, "-o", tmp_path / name)
        assert refused.returncode == 2
        assert "argument -o/--output: " in refused.stderr
        assert "does not end in .png: the figure is drawn as PNG only" in refused.stderr
        assert not (tmp_path / name).exists()


def test_plot_takes_the_servers_metrics_of_the_same_run_and_refuses_another_runs(chain, tmp_path):
    blocks = load_chain(chain).blocks
    rows = [
        {
            "round": b.index,
            "client": c,
            "rows": 535,
            "local_mse_before": 1.0,
            "local_mse_after": 0.2,
            "test_mse": 0.19,
            "test_r2": 0.75,
            "mining_s": 0.01,
            "nonce": 1,
            "round_s": 0.1,
            "block_hash": b.hash,
        }
        for b in blocks
        if b.cli
        for c in b.cli
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    drawn = plot(
        chain,
        "--metrics",
        tmp_path / "metrics.csv",
        "-o",
        tmp_path / "m.png",
    )
    assert drawn.returncode == 0, drawn.stderr
    assert png_size(tmp_path / "m.png") == (1200, 500)
    rows[0]["block_hash"] = "ab" * 32
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    refused = plot(
        chain,
        "--metrics",
        tmp_path / "metrics.csv",
        "-o",
        tmp_path / "other.png",
    )
    assert refused.returncode == 2 and "belongs to another run" in refused.stderr
    assert not (tmp_path / "other.png").exists()


def test_plot_refuses_test_rows_with_other_columns(chain, tmp_path):
    pd.read_csv(TEST_CSV).drop(columns="bmi").to_csv(tmp_path / "t.csv", index=False)
    result = plot(chain, "--test", tmp_path / "t.csv", "-o", tmp_path / "c.png")
    assert result.returncode == 2 and "missing 'bmi'" in result.stderr


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Using the result\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]


def test_the_readmes_notebook_example_runs_as_written(run, tmp_path):
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) == 8
    # From the top of a checkout after a three-terminal run, as the README says: the run's
    # chain in runs/<date>-<time>/ (an older run and a demo's beside it), and the
    # known_servers file its clients wrote.
    for folder in ("20261206-090000", "20261207-120000", "demo-20261207-130000-abcdefgh"):
        (tmp_path / "runs" / folder).mkdir(parents=True)
    for other in ("20261206-090000", "demo-20261207-130000-abcdefgh"):
        (tmp_path / "runs" / other / "chain.jsonl").write_text("not this one\n")
    shutil.copy(run / "chain.jsonl", tmp_path / "runs" / "20261207-120000" / "chain.jsonl")
    (tmp_path / "keys").mkdir()
    shutil.copy(run / "keys" / "known_servers", tmp_path / "keys" / "known_servers")
    (tmp_path / "data").mkdir()
    shutil.copy(TEST_CSV, tmp_path / "data" / "test.csv")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr  # pinned: no warning
    r2_text, same = result.stdout.split()
    assert 0.7 < float(r2_text) < 0.8 and same == "True"  # the simulation is the chain's run


def test_plot_refuses_a_chain_with_no_round_yet(chain, tmp_path):
    chain.write_text(chain.read_text().splitlines()[0] + "\n")  # the genesis alone verifies
    result = plot(chain, "-o", tmp_path / "c.png")
    assert result.returncode == 1 and "holds no round yet" in result.stderr
    assert not (tmp_path / "c.png").exists()
