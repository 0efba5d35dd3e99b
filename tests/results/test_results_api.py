"""The result as tables and a model: read off a verified chain, checked against the blocks and
numpy, its model file read back bit for bit, and a bad chain, model file or metrics file refused."""

import json

import numpy as np
import pandas as pd
import pytest
from chain_helpers import FEATURES, build_chain
from processes import ROOT

from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import mse
from fedchain.ledger.store import ChainWriter, block_to_json
from fedchain.ledger.verification import ChainError
from fedchain.results import (
    ModelFileError,
    load_global_models,
    load_model,
    load_rounds,
    simulated_rounds,
)
from fedchain.results.chain_model import model_from_json
from fedchain.results.history import MetricsError, errors_on, read_metrics

# These tests read tables and models off chains no one pinned a key for: the warning that says
# so is tested with the forged chains (tests/cli/test_forged_chains.py).
pytestmark = pytest.mark.filterwarnings("ignore::fedchain.results.UnpinnedChainWarning")


@pytest.fixture(scope="module")
def blocks():
    return build_chain(rounds=3, closed=True)


@pytest.fixture
def chain_path(tmp_path, blocks):
    path = tmp_path / "chain.jsonl"
    with ChainWriter(path) as writer:
        for block in blocks:
            writer.append(block)
    return path


def test_load_rounds_has_a_row_per_round_and_client_with_the_blocks_models(chain_path, blocks):
    rounds = load_rounds(chain_path)
    assert list(rounds.columns) == ["round", "client", "n_samples", "block_hash", *FEATURES, "bias"]
    assert len(rounds) == 3 * 2  # the closing block holds no models
    for row in rounds.itertuples(index=False):
        update = blocks[row.round].client_model[row.client]
        assert row.block_hash == blocks[row.round].hash and row.n_samples == update.n_samples
        assert [getattr(row, f) for f in FEATURES] == update.model.weights.tolist()
        assert row.bias == update.model.bias
    globals_ = load_global_models(chain_path)
    assert globals_["round"].tolist() == [0, 1, 2, 3]
    assert globals_[list(FEATURES)].to_numpy().tolist() == [
        b.server_model.weights.tolist() for b in blocks[:4]
    ]


def test_the_model_has_scikit_learns_names_and_predicts_as_numpy_does(chain_path, blocks):
    model = load_model(chain_path)
    final = blocks[3].server_model  # the last round's, not the closing block's copy
    assert model.round == 3 and model.block_hash == blocks[3].hash
    assert model.genesis_hash == blocks[0].hash and model.target == "charges"
    assert model.coef_.tolist() == final.weights.tolist() and model.intercept_ == final.bias
    assert model.feature_names_in_.tolist() == list(FEATURES) and model.n_features_in_ == 3
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=50)
    assert np.array_equal(model.predict(X), X @ final.weights + final.bias)
    # A DataFrame's columns are matched by name, in any order, other columns left out.
    frame = pd.DataFrame(X[:, ::-1], columns=list(FEATURES)[::-1]).assign(note=1.0)
    assert np.array_equal(model.predict(frame), model.predict(X))
    assert model.score(X, y) == pytest.approx(1 - mse(final, X, y) / np.var(y), rel=1e-12)
    with pytest.raises(ValueError, match="lack the model's column"):
        model.predict(frame.drop(columns=["bmi"]))
    assert load_model(chain_path, round=1).coef_.tolist() == blocks[1].server_model.weights.tolist()
    with pytest.raises(ValueError, match=r"has rounds 0\.\.3, not 4"):
        load_model(chain_path, round=4)


def test_the_model_file_reads_back_bit_for_bit(chain_path):
    model = load_model(chain_path, target="ln_charges")
    again = model_from_json(model.to_json())
    assert again.model == model.model and again.feature_names == model.feature_names
    record = json.loads(model.to_json())
    assert record["target"] == "ln_charges" and "does not record" in record["target_source"]
    assert (record["round"], record["block_hash"]) == (3, model.block_hash)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("genesis_hash"), "lacks genesis_hash"),
        (lambda r: r.update(extra=1), "unknown field"),
        (lambda r: r.update(format="other"), "format is 'other'"),
        (lambda r: r["weights"].append(1.0), "3 feature names for 4 weights"),
        (lambda r: r["weights"].__setitem__(0, "1"), "weights must hold finite numbers"),
        (lambda r: r.update(bias=None), "bias must hold finite numbers"),
    ],
)
def test_a_bad_model_file_is_refused_naming_the_field(chain_path, change, message):
    record = json.loads(load_model(chain_path).to_json())
    change(record)
    with pytest.raises(ModelFileError, match=message):
        model_from_json(json.dumps(record))
    with pytest.raises(ModelFileError, match="not a finite number"):
        model_from_json(load_model(chain_path).to_json().replace('"bias": ', '"bias": NaN, "x":'))


def test_a_chain_that_does_not_verify_gives_no_tables_and_no_model(chain_path, blocks):
    lines = chain_path.read_text().splitlines()
    lines[2] = block_to_json(blocks[2]).replace('"bias":', '"bias":1', 1)
    chain_path.write_text("\n".join(lines) + "\n")
    for load in (load_rounds, load_global_models, load_model):
        with pytest.raises(ChainError, match="block 2"):
            load(chain_path)


def test_the_simulation_table_has_the_chains_shape():
    rounds = simulated_rounds(rounds=1)
    data = load_dataset(ROOT / "data" / "test.csv")
    assert list(rounds.columns) == ["round", "client", "n_samples", *data.feature_names, "bias"]
    assert rounds["client"].tolist() == ["cli1", "cli2"]
    assert rounds["n_samples"].tolist() == [535, 535]


def test_errors_on_rows_are_every_models_mse(blocks):
    rng = np.random.default_rng(2)
    test = type("Rows", (), {"X": rng.normal(size=(20, 3)), "y": rng.normal(size=20)})
    errors = errors_on(blocks, test)
    assert len(errors) == 4 + 3 * 2  # the global model from round 0, each client's per round
    row = errors[(errors["round"] == 2) & (errors["model"] == "cli2")].iloc[0]
    assert row["mse"] == mse(blocks[2].client_model["cli2"].model, test.X, test.y)


def write_metrics(path, blocks, **changes) -> None:
    rows = [
        {
            "round": b.index,
            "client": c,
            "rows": 1,
            "local_mse_after": 0.5,
            "test_mse": 0.25,
            "block_hash": b.hash,
        }
        for b in blocks[1:4]
        for c in b.cli
    ]
    rows[-1].update(changes)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_metrics_of_the_same_run_are_read(tmp_path, blocks):
    write_metrics(tmp_path / "m.csv", blocks)
    assert len(read_metrics(tmp_path / "m.csv", blocks)) == 6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"block_hash": "0" * 64}, "not round 3's on the chain"),
        ({"block_hash": "ab"}, "not round 3's on the chain"),
        ({"round": 4}, r"round 4 is not a round of the chain \(1\.\.3\)"),
        ({"client": "cli9"}, "'cli9' has no model in round 3"),
        ({"test_mse": "x"}, "'test_mse' holds something other than numbers"),
    ],
)
def test_metrics_of_another_run_are_refused(tmp_path, blocks, changes, message):
    write_metrics(tmp_path / "m.csv", blocks, **changes)
    with pytest.raises(MetricsError, match=message):
        read_metrics(tmp_path / "m.csv", blocks)
