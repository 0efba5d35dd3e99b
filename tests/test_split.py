"""data/split.py: the bundled split byte for byte by default; N clients, in file order or sorted by
a column, dealt as fedchain.learning.partition deals them; bad input refused, nothing written."""

import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest
from processes import ROOT

from fedchain.learning.dataset import load_dataset
from fedchain.learning.partition import pool, split_rows, split_sorted

DATA = ROOT / "data"
spec = importlib.util.spec_from_file_location("split_script", DATA / "split.py")
split = importlib.util.module_from_spec(spec)
spec.loader.exec_module(split)


def bundled_clients():
    return pool(load_dataset(DATA / f"client{i}.csv") for i in (1, 2))


def test_by_default_it_remakes_the_bundled_files_byte_for_byte(tmp_path):
    shutil.copytree(DATA, tmp_path / "data")
    for name in ("test.csv", "client1.csv", "client2.csv"):
        (tmp_path / "data" / name).unlink()
    done = subprocess.run(
        [sys.executable, "data/split.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "test.csv: 268 rows",
        "client1.csv: 535 rows",
        "client2.csv: 535 rows",
    ]
    for name in ("test.csv", "client1.csv", "client2.csv"):
        assert (tmp_path / "data" / name).read_bytes() == (DATA / name).read_bytes()


def test_two_clients_in_a_folder_are_the_bundled_halves(tmp_path):
    assert split.main(["--clients", "2", "--out", str(tmp_path)]) == 0
    for name in ("client1.csv", "client2.csv"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes()


def test_n_clients_in_file_order_as_partition_deals_them(tmp_path):
    assert split.main(["--clients", "3", "--out", str(tmp_path / "new")]) == 0
    expected = split_rows(bundled_clients(), 3).values()
    for i, shard in enumerate(expected, start=1):
        got = load_dataset(tmp_path / "new" / f"client{i}.csv")
        assert np.array_equal(got.X, shard.X) and np.array_equal(got.y, shard.y)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "client1.csv",
        "client2.csv",
        "client3.csv",
    ]


def test_sorted_by_a_column_as_partition_deals_them(tmp_path):
    assert split.main(["--clients", "4", "--sort-by", "bmi", "--out", str(tmp_path)]) == 0
    for i, shard in enumerate(split_sorted(bundled_clients(), "bmi", 4).values(), start=1):
        got = load_dataset(tmp_path / f"client{i}.csv")
        assert np.array_equal(got.X, shard.X) and np.array_equal(got.y, shard.y)
    # Non-IID: each client holds one range of bmi.
    first, second = (load_dataset(tmp_path / f"client{i}.csv") for i in (1, 2))
    assert first.X[:, 1].max() <= second.X[:, 1].min()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--clients", "0"], "--clients must be 1 to 535 (two of the 1070 non-test rows each"),
        (["--clients", "536"], "--clients must be 1 to 535"),
        (["--sort-by", "height"], "--sort-by: no column 'height' (columns: age, bmi,"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(tmp_path, capsys, argv, expected):
    assert split.main([*argv, "--out", str(tmp_path / "new")]) == split.EXIT_USAGE
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("out", [[], ["--out", str(DATA)]])
def test_another_split_is_not_written_over_the_bundled_files(capsys, out):
    assert split.main(["--clients", "3", *out]) == split.EXIT_USAGE
    assert "--out FOLDER: this split goes to a folder of its own" in capsys.readouterr().err
