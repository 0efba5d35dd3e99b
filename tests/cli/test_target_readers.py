"""Readers of a chain that records its target (formats 10 to 17): export, predict, the model's
own printout, the report page and the run's summary use the recorded column and say its unit,
and a --target that differs is refused, naming both. In process, on small chains."""

import json

import numpy as np
import pytest
from chain_helpers import FEATURES, SERVER_KEY, build_chain
from in_process import run_main

from fedchain.cli.run_summary import summarise_run
from fedchain.learning.dataset import Dataset
from fedchain.ledger.block import TargetRecord
from fedchain.ledger.store import ChainWriter, load_chain
from fedchain.results.chain_model import TARGET_SOURCE, model_from_json
from fedchain.results.page import settings_rows
from fedchain.results.target import unit_line
from fedchain.trust.keys import public_hex

BUNDLED = TargetRecord("charges", "ln(USD per year)")
DOLLARS = "numpy.exp(predicted_charges) gives USD per year"


def write_chain(folder, target=BUNDLED):
    path = folder / "chain.jsonl"
    with ChainWriter(path) as writer:
        for block in build_chain(rounds=2, closed=True, target=target):
            writer.append(block)
    return path


@pytest.fixture
def chain(tmp_path):
    return write_chain(tmp_path)


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(",".join(FEATURES) + "\n30,25.5,0\n52,31,1\n", encoding="utf-8")
    return path


def test_export_records_the_chain_s_target_and_unit(chain, tmp_path):
    exported = run_main("blockchain.py", "export", chain, "-o", tmp_path / "model.json")
    assert exported.returncode == 0, exported.stderr
    assert f"predicted_charges is in ln(USD per year): {DOLLARS}" in exported.stdout
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["target"] == "charges" and record["target_unit"] == "ln(USD per year)"
    assert record["target_source"].startswith("recorded in the chain's genesis")
    model = model_from_json((tmp_path / "model.json").read_text())
    assert (model.target, model.unit) == ("charges", "ln(USD per year)")


def test_export_of_an_older_chain_names_the_target_on_the_reader_s_word(tmp_path):
    chain = write_chain(tmp_path, target=None)
    exported = run_main("blockchain.py", "export", chain, "--target", "y")
    record = json.loads(exported.stdout)
    assert record["target"] == "y" and record["target_source"] == TARGET_SOURCE
    assert "target_unit" not in record  # the file is as older programs wrote it
    assert model_from_json(exported.stdout).unit is None


@pytest.mark.parametrize("command", ["export", "report", "plot"])
def test_a_typed_target_other_than_the_recorded_one_is_refused_naming_both(chain, command):
    result = run_main("blockchain.py", command, chain, "--target", "y")
    assert result.returncode == 2
    assert "the chain's run predicts 'charges'; --target is 'y'" in result.stderr


def test_a_typed_target_that_matches_is_taken(chain):
    assert run_main("blockchain.py", "export", chain, "--target", "charges").returncode == 0


def test_predict_says_the_unit_beside_its_csv_and_how_to_get_dollars(chain, rows, tmp_path):
    printed = run_main("model.py", "predict", "--chain", chain, "--data", rows)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines()[0] == "predicted_charges"  # the CSV alone on stdout
    assert f"note: predicted_charges is in ln(USD per year): {DOLLARS}" in printed.stderr
    written = run_main(
        "model.py", "predict", "--chain", chain, "--data", rows, "-o", tmp_path / "p.csv"
    )
    assert f"predicted_charges is in ln(USD per year): {DOLLARS}" in written.stdout


def test_predict_from_a_model_file_refuses_renaming_a_recorded_target(chain, rows, tmp_path):
    run_main("blockchain.py", "export", chain, "-o", tmp_path / "model.json")
    result = run_main(
        "model.py", "predict", "--model", tmp_path / "model.json", "--data", rows, "--target", "y"
    )
    assert result.returncode == 2
    assert "the model predicts 'charges', as its chain records; --target is 'y'" in result.stderr


def test_predict_from_the_chain_refuses_another_target(chain, rows):
    result = run_main("model.py", "predict", "--chain", chain, "--data", rows, "--target", "y")
    assert result.returncode == 1
    assert "the chain's run predicts 'charges'; --target is 'y'" in result.stderr


def test_the_model_s_printout_says_what_y_is(chain):
    shown = run_main("model.py", chain)
    assert shown.returncode == 0, shown.stderr
    assert (
        "y is the predicted charges; y is in ln(USD per year): numpy.exp(y) gives USD per year"
        in shown.stdout
    )


def test_the_report_page_shows_the_target_and_its_unit(chain):
    rows = dict(settings_rows(load_chain(chain).blocks[0]))
    assert rows["target"] == (
        "charges, in ln(USD per year) (numpy.exp of a prediction gives USD per year)"
    )
    older = dict(settings_rows(build_chain(rounds=1)[0]))
    assert "target" not in older  # a chain that records none: the page does not guess


def test_the_run_s_summary_uses_the_recorded_unit(tmp_path):
    chain = write_chain(tmp_path, TargetRecord("y", "kWh"))
    rng = np.random.default_rng(0)
    test = Dataset(FEATURES, rng.normal(size=(5, 3)), rng.normal(size=5))
    said = []
    summarise_run(chain, None, test, "y", said.append, server_key=public_hex(SERVER_KEY))
    assert "the global model on 5 held-out rows (target y, in kWh):" in said


def test_a_unit_is_said_in_words_and_a_log_how_to_undo_it():
    assert unit_line("v", "kWh") == "v is in kWh"
    assert unit_line("v", "ln(kWh)") == "v is in ln(kWh): numpy.exp(v) gives kWh"
    assert unit_line("v", "") == "v's unit is not stated by the run (the server's --target-unit)"
    assert unit_line("v", None) is None


def test_verify_says_what_the_run_predicts(chain):
    verified = run_main("blockchain.py", "verify", chain)
    assert "the run predicts charges, in ln(USD per year)" in verified.stdout
    other = write_chain(chain.parent / "other", TargetRecord("y"))
    unstated = run_main("blockchain.py", "verify", other)
    assert "the run predicts y (its unit not stated)" in unstated.stdout


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_unit", "\x1b[2J\x1b[31mUSD"),  # clears the terminal, then paints it red
        ("target_unit", "USD\u202e"),  # turns what follows right to left
        ("target_unit", "x" * 201),
        ("target", "charges\x1b[2J"),
        ("target", "charges\nage"),  # a second line in the CSV's header
    ],
)
def test_a_model_file_s_target_and_unit_are_held_to_the_chain_s_rules(
    chain, rows, tmp_path, field, value
):
    # A model file is taken as it is, but what it says is printed: it must be what a chain
    # could hold, not escapes sent raw to the reader's terminal.
    run_main("blockchain.py", "export", chain, "-o", tmp_path / "model.json")
    record = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(record | {field: value}))
    result = run_main("model.py", "predict", "--model", tmp_path / "model.json", "--data", rows)
    assert result.returncode == 1, result.stdout
    assert "\x1b" not in result.stdout + result.stderr
    assert "\u202e" not in result.stdout + result.stderr
    assert f"{tmp_path / 'model.json'}: " in result.stderr


@pytest.mark.parametrize("unit", ["$\\frac{$", "USD $ per $ year"])
@pytest.mark.parametrize("command", ["plot", "report"])
def test_a_unit_with_dollar_signs_is_drawn_as_text_not_parsed_as_maths(tmp_path, unit, command):
    # matplotlib reads text between two $ as mathtext: the run's unit (any printable text) broke
    # the figure with a traceback, or drew '$ per $' as italic maths.
    chain = write_chain(tmp_path, TargetRecord("charges", unit))
    test = tmp_path / "test.csv"
    test.write_text(",".join(FEATURES) + ",charges\n30,25.5,0,9.1\n52,31,1,9.9\n40,20,0,9.3\n")
    out = tmp_path / ("figure.png" if command == "plot" else "page.html")
    result = run_main("blockchain.py", command, chain, "--test", test, "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def test_the_figure_s_title_keeps_a_unit_s_dollar_signs():
    from fedchain.results.figure import plain_text

    assert plain_text("USD $ per $ year") == "USD \\$ per \\$ year"
    assert plain_text("kWh") == "kWh"
