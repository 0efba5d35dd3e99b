"""The CSV loader: the bundled files load, and every bad file is refused naming file and cell."""

from pathlib import Path

import numpy as np
import pytest

from dataset import DataError, load_dataset

DATA = Path(__file__).resolve().parent.parent / "data"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(text)
    return path


def test_bundled_client_files_load_with_features_in_file_order():
    data = load_dataset(DATA / "client1.csv")
    assert data.feature_names[:2] == ("age", "bmi")
    assert "charges" not in data.feature_names
    assert data.X.shape == (535, 12) and data.y.shape == (535,)
    assert data.X.dtype == np.float64
    assert data.y[0] == pytest.approx(9.734176431773115)


def test_split_is_disjoint_and_covers_every_row():
    def rows(name):
        return (DATA / name).read_text().splitlines()[1:]

    parts = [rows(n) for n in ("client1.csv", "client2.csv", "test.csv")]
    assert sorted(parts[0] + parts[1] + parts[2]) == sorted(rows("insurance.csv"))
    assert len(parts[2]) == round(0.2 * len(rows("insurance.csv")))


def test_other_target_column(tmp_path):
    data = load_dataset(write(tmp_path, "a,b,y\n1,2,3\n4,5,6\n"), target="a")
    assert data.feature_names == ("b", "y")
    assert list(data.y) == [1.0, 4.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b\n1,2\n3,4\n", "no target column 'charges'"),
        ("a,charges\n1,x\n3,4\n", "row 2, column 'charges': 'x' is not a number"),
        ("a,charges\n1,2\n,4\n", "row 3, column 'a': empty cell"),
        ("a,charges\n1,2\n3\n", "row 3 has 1 cells, the header 2"),
        ("a,charges\n1,nan\n3,4\n", "'nan' is not a finite number"),
        ("a,charges\n", "no rows"),
        ("a,charges\n1,2\n", "only one row"),
        ("", "empty"),
        ("charges\n1\n2\n", "no feature columns"),
        ("a,a,charges\n1,2,3\n4,5,6\n", "'a' appears more than once"),
        (" a,charges\n1,2\n3,4\n", "' a' has spaces around it"),
        ("a\tb,charges\n1,2\n3,4\n", "unprintable"),
        ("x" * 65 + ",charges\n1,2\n3,4\n", "is over 64 characters"),
        ("a,charges\n1,2\n3,4,5\n", "row 3 has 3 cells"),
    ],
)
def test_bad_files_are_refused_with_a_clear_error(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        load_dataset(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        load_dataset(tmp_path / "absent.csv")


def test_file_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"a,charges\n1,2\n3,\xff\n")
    with pytest.raises(DataError, match="not a readable CSV file"):
        load_dataset(path)
