"""Load one client's rows from a CSV file: the target column is y, every other column a feature.

Every refusal names the file, and the row and column where that helps, because the person reading
it has to find the bad cell in a file only they can see.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_TARGET = "charges"
MAX_COLUMN_NAME_CHARS = 64  # as long as a name may be on the wire


class DataError(ValueError):
    """A data file that cannot be used, with a message that says where and why."""


@dataclass(frozen=True)
class Dataset:
    feature_names: tuple[str, ...]
    X: np.ndarray  # (n_samples, n_features), float64
    y: np.ndarray  # (n_samples,), float64

    @property
    def n_samples(self) -> int:
        return len(self.y)


def load_dataset(path: str | Path, *, target: str = DEFAULT_TARGET) -> Dataset:
    """Read PATH, split off the TARGET column, and check that every cell is a finite number."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = [row for row in csv.reader(file) if row]  # blank lines carry nothing
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from None
    if not rows:
        raise DataError(f"{path}: the file is empty (no header, no rows)")

    header, body = rows[0], rows[1:]
    _check_header(path, header, target)
    if not body:
        raise DataError(f"{path}: the file has a header but no rows")
    if len(body) == 1:
        raise DataError(f"{path}: only one row; a linear model needs at least two")

    values = np.empty((len(body), len(header)), dtype=np.float64)
    for i, row in enumerate(body):
        line = i + 2  # 1-based, after the header
        if len(row) != len(header):
            raise DataError(f"{path}: row {line} has {len(row)} cells, the header {len(header)}")
        for j, cell in enumerate(row):
            values[i, j] = _parse_cell(f"{path}: row {line}, column {header[j]!r}", cell)

    target_index = header.index(target)
    feature_names = tuple(c for c in header if c != target)
    X = np.delete(values, target_index, axis=1)
    y = values[:, target_index].copy()
    return Dataset(feature_names=feature_names, X=X, y=y)


def _check_header(path: Path, columns: list[str], target: str) -> None:
    if target not in columns:
        raise DataError(f"{path}: no target column {target!r} (columns: {', '.join(columns)})")
    if any(not c.strip() for c in columns):
        raise DataError(f"{path}: a column has no name in the header")
    for column in columns:
        # Column names travel to the server and onto the chain: keep them plain.
        if column != column.strip() or not column.isprintable():
            raise DataError(f"{path}: column {column!r} has spaces around it or unprintable text")
        if len(column) > MAX_COLUMN_NAME_CHARS:
            raise DataError(
                f"{path}: column {column[:20]!r}… is over {MAX_COLUMN_NAME_CHARS} characters"
            )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: column {repeated[0]!r} appears more than once in the header")
    if len(columns) < 2:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")


def _parse_cell(where: str, cell: str) -> float:
    if not cell.strip():
        raise DataError(f"{where}: empty cell")
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{where}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {cell!r} is not a finite number")
    return value
