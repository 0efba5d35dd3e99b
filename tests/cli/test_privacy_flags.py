"""The privacy flags: refused with a message that names what is wrong, before anything runs."""

import pytest
from in_process import run_main
from processes import ROOT

SCHEMA = ROOT / "data" / "schema.csv"


def server_error(tmp_path, *args) -> tuple[int, str]:
    result = run_main(
        "server.py",
        "--port",
        "0",
        "--chain",
        tmp_path / "chain.jsonl",
        "--key",
        tmp_path / "server.key",
        *args,
    )
    return result.returncode, result.stderr


def test_max_epsilon_needs_a_schema(tmp_path):
    code, error = server_error(tmp_path, "--max-epsilon", "1")
    assert code == 2
    assert "--max-epsilon needs --schema" in error


def test_a_schema_that_does_not_bound_a_test_column_is_refused_naming_it(tmp_path):
    kept = [line for line in SCHEMA.read_text().splitlines() if not line.startswith("bmi")]
    (tmp_path / "short.csv").write_text("\n".join(kept) + "\n")
    code, error = server_error(tmp_path, "--schema", tmp_path / "short.csv")
    assert code == 2
    assert "the schema's columns differ from the data's: missing 'bmi'" in error


def test_a_schema_with_a_bad_line_is_refused_naming_the_file_and_line(tmp_path):
    (tmp_path / "bad.csv").write_text("column,low,high\nage,65,18\n")
    code, error = server_error(tmp_path, "--schema", tmp_path / "bad.csv")
    assert code == 2
    assert (
        f"{tmp_path / 'bad.csv'}, line 2: age: the bounds must be finite with low < high" in error
    )


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--dp-epsilon", "0"], "must be a number in [0.01, 100]"),
        (["--dp-epsilon", "nan"], "must be a number in [0.01, 100]"),
        (["--dp-epsilon", "one"], "is not a number"),
        (["--dp-epsilon", "1", "--dp-delta", "0"], "must be above 0"),
        (["--dp-epsilon", "1", "--dp-delta", "0.5"], "must be a number in [0, 0.1]"),
    ],
)
def test_a_budget_out_of_range_is_a_usage_error(flags, reason):
    result = run_main(
        "client.py", "--name", "cli1", "--data", ROOT / "data" / "client1.csv", *flags
    )
    assert result.returncode == 2
    assert reason in result.stderr
