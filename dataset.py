"""Load one client's rows from a CSV file: the target column is y, every other column a feature.

Every refusal names the file, and the row and column where that helps, because the person reading
it has to find the bad cell in a file only they can see.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_TARGET = "charges"


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
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        # Read as text so that every cell is checked here, with its position, not guessed at.
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from None

    columns = list(table.columns)
    _check_header(path, columns, target)
    if len(table) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    if len(table) == 1:
        raise DataError(f"{path}: only one row; a linear model needs at least two")

    values = np.empty(table.shape, dtype=np.float64)
    for j, column in enumerate(columns):
        for i, cell in enumerate(table[column]):
            values[i, j] = _parse_cell(path, i, column, cell)

    target_index = columns.index(target)
    feature_names = tuple(c for c in columns if c != target)
    X = np.delete(values, target_index, axis=1)
    y = values[:, target_index].copy()
    return Dataset(feature_names=feature_names, X=X, y=y)


def _check_header(path: Path, columns: list[str], target: str) -> None:
    if target not in columns:
        raise DataError(f"{path}: no target column {target!r} (columns: {', '.join(columns)})")
    unnamed = [c for c in columns if c.startswith("Unnamed:") or not c.strip()]
    if unnamed:
        raise DataError(f"{path}: a column has no name in the header")
    # pandas renames a repeated header 'bmi' to 'bmi.1'; say what the file really holds.
    for column in columns:
        stem, _, suffix = column.rpartition(".")
        if suffix.isdigit() and stem in columns:
            raise DataError(f"{path}: column {stem!r} appears more than once in the header")
    if len(columns) < 2:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")


def _parse_cell(path: Path, row_index: int, column: str, cell: object) -> float:
    where = f"{path}: row {row_index + 2}, column {column!r}"  # +2: 1-based, after the header
    if not isinstance(cell, str):  # pandas fills the cells a short row lacks
        raise DataError(f"{where}: missing (the row has too few cells)")
    if not cell.strip():
        raise DataError(f"{where}: empty cell")
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{where}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {cell!r} is not a finite number")
    return value
