"""Load one client's rows from a CSV file: the target column is y, every other column a feature.

pandas parses the file. When it cannot, or a cell is not a finite number, the file is read once
more cell by cell to say exactly where: every refusal names the file, and the line and column where
that helps, because the person reading it has to find the bad cell in a file only they can see.
"""

import csv
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedchain import settings
from fedchain.checks import check_name


class DataError(ValueError):
    """A data file that cannot be used, with a message that says where and why."""


# What pandas reads as a number: plain decimal notation. Python's float() also takes '1_000' and
# other scripts' digits, which pandas refuses; the fault finder must refuse what pandas does.
_NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")
_NON_FINITE = re.compile(r"\s*[+-]?(nan|inf|infinity)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Dataset:
    feature_names: tuple[str, ...]
    X: np.ndarray  # (n_samples, n_features), float64
    y: np.ndarray  # (n_samples,), float64

    @property
    def n_samples(self) -> int:
        return len(self.y)

    def in_order(self, feature_names: Sequence[str]) -> "Dataset":
        """The same rows with the columns in FEATURE_NAMES' order (matched by name)."""
        if difference := column_difference(feature_names, self.feature_names):
            raise DataError(f"the columns differ from the run's: {difference}")
        order = [self.feature_names.index(name) for name in feature_names]
        return Dataset(tuple(feature_names), self.X[:, order], self.y)


def column_difference(expected: Sequence[str], actual: Sequence[str]) -> str:
    """What ACTUAL lacks and has besides EXPECTED, in words; empty if they hold the same names."""
    missing = [name for name in expected if name not in actual]
    extra = [name for name in actual if name not in expected]
    parts = [
        f"{label} {', '.join(map(repr, names[:10]))}" + (", …" if len(names) > 10 else "")
        for label, names in (("missing", missing), ("extra", extra))
        if names
    ]
    return "; ".join(parts)


def load_dataset(path: str | Path, *, target: str = settings.TARGET) -> Dataset:
    """Read PATH, split off the TARGET column, and check that every cell is a finite number."""
    path = Path(path)
    header = _check_header(path, _read_header(path), target)
    values = _parse_with_pandas(path, header)
    if isinstance(values, str):
        _locate_fault(path, header, values)  # raises, naming the line and column
    if len(values) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    if len(values) == 1:
        raise DataError(f"{path}: only one row; a linear model needs at least two")
    target_index = header.index(target)
    feature_names = tuple(c for c in header if c != target)
    X = np.delete(values, target_index, axis=1)
    y = values[:, target_index].copy()
    data = Dataset(feature_names=feature_names, X=X, y=y)
    check_squarable(data, path, target=target)
    return data


def load_rows(
    path: str | Path, *, feature_names: Sequence[str], target: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read PATH's FEATURE_NAMES columns, matched by name, as X in FEATURE_NAMES' order, and its
    TARGET column as y if it has one (else None): rows to predict, or to score a model on.
    Every cell must be a finite number; a column not asked for is read and left out."""
    path = Path(path)
    header = _check_columns(path, _read_header(path))
    if missing := [name for name in feature_names if name not in header]:
        shown = ", ".join(map(repr, missing[:10])) + (", …" if len(missing) > 10 else "")
        raise DataError(f"{path}: the model's column(s) {shown} are missing")
    values = _parse_with_pandas(path, header)
    if isinstance(values, str):
        _locate_fault(path, header, values)  # raises, naming the line and column
    if len(values) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    X = values[:, [header.index(name) for name in feature_names]]
    y = values[:, header.index(target)].copy() if target in header else None
    return X, y


def check_squarable(
    data: Dataset, path: str | Path, *, target: str = settings.TARGET, about_mean: bool = True
) -> None:
    """Raise DataError, naming PATH's line and column, if a column of DATA is too large to train
    on (ABOUT_MEAN: the sum of its squared deviations from its mean overflows float64, as local
    training sums them) or to predict and score with (not ABOUT_MEAN: the sum of its squares
    does, whatever the other rows, a single row included)."""
    values = np.column_stack([data.X, data.y])
    with np.errstate(over="ignore", invalid="ignore"):
        deviation = values - values.mean(axis=0) if about_mean else values
        too_large = ~np.isfinite(np.einsum("ij,ij->j", deviation, deviation))
    if not too_large.any():
        return
    # In each such column name its largest value, the one to fix (a single 1e300 among values
    # near 30 pushes every other deviation out of range too); the earliest of them in the file.
    largest = np.argmax(np.abs(values), axis=0)
    rows = {int(largest[j]): j for j in np.flatnonzero(too_large)[::-1]}
    row = min(rows)
    name = [*data.feature_names, target][rows[row]]
    raise DataError(
        f"{path}: {_where(Path(path), row, name)} is too large: the column's squared "
        f"{'deviations from its mean' if about_mean else 'values'} overflow float64 (keep "
        "values within about ±1e150)"
    )


def _where(path: Path, row: int, column: str) -> str:
    """Data row ROW (from 0)'s line in the file, counted as _locate_fault counts, the column,
    and the COLUMN cell as written."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            rows = (cells for cells in reader if not _blank(cells))
            header = next(rows)
            for index, cells in enumerate(rows):
                if index == row:
                    cell = cells[header.index(column)]
                    return f"line {reader.line_num}, column {column!r}: {cell[:40]!r}"
    except (OSError, UnicodeDecodeError, csv.Error, StopIteration, ValueError, IndexError):
        pass  # changed since it was loaded: name the row without its line
    return f"data row {row + 1}, column {column!r}"


def _read_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            for row in csv.reader(file):
                if not _blank(row):
                    return row
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from None
    raise DataError(f"{path}: the file is empty (no header, no rows)")


def _check_header(path: Path, columns: list[str], target: str) -> list[str]:
    if target not in columns:
        raise DataError(f"{path}: no target column {target!r} (columns: {', '.join(columns)})")
    _check_columns(path, columns)
    if len(columns) < 2:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    return columns


def _check_columns(path: Path, columns: list[str]) -> list[str]:
    for column in columns:
        if not column.strip():
            raise DataError(f"{path}: a column has no name in the header")
        try:
            check_name(column, "column")  # names travel to the server and onto the chain
        except ValueError as error:
            raise DataError(f"{path}: {error}") from None
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: column {repeated[0]!r} appears more than once in the header")
    return columns


def _parse_with_pandas(path: Path, header: list[str]) -> np.ndarray | str:
    """Every cell as float64, or what pandas found wrong (then the slow pass says where)."""
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row's cell count differs from the header's; refuse it.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype=np.float64, index_col=False, encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as e:
        return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if list(table.columns) != header:
        return f"pandas read the header as {list(table.columns)[:10]}"
    values = table.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        return "a cell is empty or not a finite number"  # a short row (NaN), 'nan', 'inf'
    return values


def _blank(row: list[str]) -> bool:
    # pandas skips empty and whitespace-only lines; so does everything here.
    return not row or (len(row) == 1 and not row[0].strip())


def _locate_fault(path: Path, header: list[str], pandas_said: str) -> None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            rows = (row for row in reader if not _blank(row))
            next(rows)  # the header, already checked
            for row in rows:
                line = reader.line_num  # the file's own line number, blank lines counted
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {line} has {len(row)} cells, the header {len(header)}"
                    )
                for name, cell in zip(header, row, strict=True):
                    _parse_cell(f"{path}: line {line}, column {name!r}", cell)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from None
    raise DataError(f"{path}: not a table of numbers ({pandas_said})")


def _parse_cell(where: str, cell: str) -> float:
    if not cell.strip():
        raise DataError(f"{where}: empty cell")
    if _NON_FINITE.fullmatch(cell):
        raise DataError(f"{where}: {cell[:40]!r} is not a finite number")
    if not _NUMBER.fullmatch(cell):
        raise DataError(f"{where}: {cell[:40]!r} is not a number in decimal notation")
    value = float(cell)
    if not math.isfinite(value):  # 1e400, say
        raise DataError(f"{where}: {cell[:40]!r} is not a finite number")
    return value


def save_dataset(
    data: Dataset,
    path: str | Path,
    *,
    target: str = settings.TARGET,
    significant_digits: int = 17,
) -> None:
    """Write DATA to PATH as load_dataset reads it: the features, then the TARGET column.

    17 significant digits read back as the same bits; fewer round the values, as measured data
    usually is, for a smaller file.
    """
    header = ",".join([*data.feature_names, target])
    values = np.column_stack([data.X, data.y])
    np.savetxt(
        path, values, fmt=f"%.{significant_digits}g", delimiter=",", header=header, comments=""
    )
