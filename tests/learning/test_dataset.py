"""The CSV loader: the bundled files load, and every bad file is refused naming file and cell."""

from pathlib import Path

import numpy as np
import pytest
from processes import ROOT

from fedchain.learning.dataset import (
    DataError,
    Dataset,
    check_squarable,
    load_dataset,
    load_rows,
    save_dataset,
)
from fedchain.learning.local_training import LocalProblem

DATA = ROOT / "data"


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
        ("a,charges\n1,x\n3,4\n", "line 2, column 'charges': 'x' is not a number"),
        ("a,charges\n1,2\n,4\n", "line 3, column 'a': empty cell"),
        ("a,charges\n1,2\n3\n", "line 3 has 1 cells, the header 2"),
        ("a,charges\n1,nan\n3,4\n", "'nan' is not a finite number"),
        ("a,charges\n", "no rows"),
        ("a,charges\n1,2\n", "only one row"),
        ("", "empty"),
        ("charges\n1\n2\n", "no feature columns"),
        ("a,a,charges\n1,2,3\n4,5,6\n", "'a' appears more than once"),
        (" a,charges\n1,2\n3,4\n", "' a' must be printable, with no spaces around it"),
        ("a\tb,charges\n1,2\n3,4\n", "'a\\tb' must be printable"),
        ("x" * 65 + ",charges\n1,2\n3,4\n", "must be 1..64 characters"),
        ("a,charges\n1,2\n3,4,5\n", "line 3 has 3 cells"),
        # Lines are the file's own, blank lines counted, so the cell can be found in an editor.
        ("a,charges\n\n1,2\n\n\n3,x\n", "line 6, column 'charges': 'x' is not a number"),
        ("\na,charges\n1,2\n3,inf\n", "line 4, column 'charges': 'inf' is not a finite"),
        # A whitespace-only line is skipped by pandas, so it is not the fault either.
        ("a,charges\n1,2\n   \n4,x\n", "line 4, column 'charges': 'x' is not a number"),
        # float() takes these, pandas does not: the fault finder must agree with pandas.
        ("a,charges\n1,2\n1_000,4\n", "line 3, column 'a': '1_000' is not a number"),
        ("a,charges\n1,2\n\u0661,4\n", "line 3, column 'a': '\u0661' is not a number"),
        # Finite, but training and scoring square it (issue item 7): the outlier is named,
        # not the first row its mean pushes out of range too.
        ("a,charges\n30,2\n\n20,3\n1e300,4\n", "line 5, column 'a': '1e300' is too large"),
        ("a,charges\n30,2\n20,-2e155\n", "line 3, column 'charges': '-2e155' is too large"),
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


def test_columns_are_matched_by_name_not_position(tmp_path):
    ordered = load_dataset(write(tmp_path, "a,b,charges\n1,2,3\n4,5,6\n"))
    (tmp_path / "shuffled.csv").write_text("charges,b,a\n3,2,1\n6,5,4\n")
    shuffled = load_dataset(tmp_path / "shuffled.csv")
    assert shuffled.feature_names == ("b", "a")
    aligned = shuffled.in_order(ordered.feature_names)
    assert aligned.feature_names == ("a", "b")
    assert np.array_equal(aligned.X, ordered.X) and np.array_equal(aligned.y, ordered.y)


def test_a_missing_or_extra_column_is_named(tmp_path):
    data = load_dataset(write(tmp_path, "a,height,charges\n1,2,3\n4,5,6\n"))
    with pytest.raises(DataError) as caught:
        data.in_order(("a", "bmi"))
    assert "missing 'bmi'; extra 'height'" in str(caught.value)


def test_a_wide_file_loads_exactly(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(50, 300))
    names = [f"f{i}" for i in range(299)] + ["charges"]
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in row) for row in values]
    data = load_dataset(write(tmp_path, "\n".join(lines) + "\n"))
    assert np.array_equal(data.X, values[:, :-1]) and np.array_equal(data.y, values[:, -1])


def test_a_saved_dataset_loads_back_bit_for_bit(tmp_path):
    data = load_dataset(DATA / "client1.csv")
    save_dataset(data, tmp_path / "copy.csv")
    again = load_dataset(tmp_path / "copy.csv")
    assert again.feature_names == data.feature_names
    assert np.array_equal(again.X, data.X) and np.array_equal(again.y, data.y)


def test_load_rows_takes_the_asked_columns_by_name_and_the_target_if_there(tmp_path):
    path = write(tmp_path, "id,b,a,charges\n1,2,3,4\n5,6,7,8\n")
    X, y = load_rows(path, feature_names=("a", "b"), target="charges")
    assert X.tolist() == [[3.0, 2.0], [7.0, 6.0]] and y.tolist() == [4.0, 8.0]
    X, y = load_rows(write(tmp_path, "b,a\n2,3\n"), feature_names=("a", "b"), target="charges")
    assert X.tolist() == [[3.0, 2.0]] and y is None  # one row is enough to predict


def test_load_rows_refuses_missing_columns_naming_them(tmp_path):
    path = write(tmp_path, "age,charges\n1,2\n")
    with pytest.raises(DataError, match=r"rows.csv: the model's column\(s\) 'bmi', 'smoker' are"):
        load_rows(path, feature_names=("age", "bmi", "smoker"))


def test_load_rows_refuses_a_bad_cell_naming_line_and_column(tmp_path):
    path = write(tmp_path, "age,bmi\n1,2\n3,x\n")
    with pytest.raises(DataError, match=r"line 3, column 'bmi': 'x' is not a number"):
        load_rows(path, feature_names=("age", "bmi"))


@pytest.mark.parametrize("value", [1e150, 1e154, 2e154, 1e200, 1e300, -1e308])
def test_too_large_is_what_local_training_cannot_square(tmp_path, value):
    path = write(tmp_path, f"a,b,charges\n30,1,2\n20,2,3\n{value!r},1,4\n25,3,5\n")
    try:
        data = load_dataset(path)
    except DataError as error:
        assert f"rows.csv: line 4, column 'a': '{value!r}' is too large" in str(error)
        with pytest.raises(ValueError, match="too large to square"):
            X = np.array([[30, 1], [20, 2], [value, 1], [25, 3]])
            LocalProblem.from_data(X, np.array([2.0, 3.0, 4.0, 5.0]))
    else:
        LocalProblem.from_data(data.X, data.y)  # builds: the refusal was not needed


def test_a_large_constant_column_is_not_refused(tmp_path):
    # A constant column is never squared (its deviations are 0), however large its value.
    assert load_dataset(write(tmp_path, "a,b,charges\n1e200,1,2\n1e200,2,3\n")).n_samples == 2


def test_check_squarable_names_the_column_of_rows_held_in_another_order(tmp_path):
    # As model.py score holds them: columns in the model's order, read with load_rows.
    path = write(tmp_path, "b,a,charges\n1,2,3\n1,4,5\n1,6,7\n2,1e300,8\n")
    X, y = load_rows(path, feature_names=("a", "b"), target="charges")
    with pytest.raises(DataError, match=r"rows.csv: line 5, column 'a': '1e300' is too large"):
        check_squarable(Dataset(("a", "b"), X, y), path)
    check_squarable(Dataset(("a", "b"), X[:3], y[:3]), path)  # the first rows are fine
