"""A run's public bounds for every column: the schema a differentially private client clips to.

The bounds must come from what is known about a column without looking at anyone's rows (an age
between 18 and 100, a flag between 0 and 1): bounds read off the data would themselves leak it.
The server publishes the schema in the genesis, so every client clips to the same bounds and a
verifier sees them. The file is a CSV with the header `column,low,high`, a row per feature and one
for the target.
"""

import csv
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedchain.checks import check_name
from fedchain.learning.dataset import DataError, column_difference

HEADER = ("column", "low", "high")
MAX_COLUMNS = 100_000


@dataclass(frozen=True)
class Schema:
    """Each column's public bounds, in the file's order."""

    bounds: dict[str, tuple[float, float]]

    def __post_init__(self) -> None:
        if not isinstance(self.bounds, dict) or not self.bounds:
            raise ValueError("a schema needs at least one column")
        for name, (low, high) in self.bounds.items():
            check_name(name, "a schema column")
            if not (isinstance(low, float) and isinstance(high, float)):
                raise TypeError(f"{name}: bounds must be floats")
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(
                    f"{name}: the bounds must be finite with low < high, not [{low!r}, {high!r}]"
                )

    def digest(self) -> str:
        """SHA-256 of the schema's canonical text, 64 hex digits: what a client checks it got."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def canonical(self) -> str:
        """The schema as CSV text that names every bound exactly (float repr round-trips), and
        quotes a name only where CSV needs it (a comma, a quote), so that it parses back."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows((name, repr(low), repr(high)) for name, (low, high) in self.bounds.items())
        return text.getvalue()

    def ranges(self, feature_names: Sequence[str], target: str) -> tuple[np.ndarray, np.ndarray]:
        """Low and high bounds for the features in FEATURE_NAMES' order, then the target's;
        a column the schema lacks, or has besides them, is refused by name."""
        expected = [*feature_names, target]
        if difference := column_difference(expected, tuple(self.bounds)):
            raise DataError(f"the schema's columns differ from the data's: {difference}")
        low = np.array([self.bounds[name][0] for name in expected])
        high = np.array([self.bounds[name][1] for name in expected])
        return low, high


def parse_schema(text: str, *, source: str = "the schema") -> Schema:
    """The schema in TEXT (CSV with the header column,low,high); errors name SOURCE and line."""
    reader = csv.reader(text.splitlines())
    try:  # the text may come from a server or a chain: the csv module's own refusals too
        header, *rows = list(reader) or [None]
    except csv.Error as error:
        raise DataError(f"{source}, line {reader.line_num}: {error}") from None
    if header is None or tuple(cell.strip() for cell in header) != HEADER:
        raise DataError(f"{source}: the first line must be {','.join(HEADER)}, not {header}")
    bounds: dict[str, tuple[float, float]] = {}
    for line, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise DataError(
                f"{source}, line {line}: expected column,low,high, got {len(row)} cells"
            )
        name, low, high = (cell.strip() for cell in row)
        if name in bounds:
            raise DataError(f"{source}, line {line}: column {name!r} is listed twice")
        try:
            check_name(name, "a column")
            values = (float(low), float(high))
            bounds[name] = values
            Schema({name: values})  # the bounds' own checks, with the line in the message
        except (TypeError, ValueError) as error:
            raise DataError(f"{source}, line {line}: {error}") from None
        if len(bounds) > MAX_COLUMNS:
            raise DataError(f"{source}: more than {MAX_COLUMNS} columns")
    if not bounds:
        raise DataError(f"{source}: no column is listed")
    return Schema(bounds)


def load_schema(path: str | Path) -> Schema:
    """The schema in the CSV file PATH."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    return parse_schema(text, source=str(path))
