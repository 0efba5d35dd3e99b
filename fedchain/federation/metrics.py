"""The run's metrics as a CSV file beside its chain: one row per round and client, written as each
round completes, so a run stopped half-way leaves the rounds it finished. pandas reads it with no
options; an empty cell is a figure nobody had (no test set, or a client that did not report it).

What the clients report about their own rows (their MSE before and after training, how long they
trained) is their word, shown for people and never trusted: the chain holds what is checked.
"""

import csv
import math
from pathlib import Path

COLUMNS = (
    "round",
    "client",
    "rows",
    "local_mse_before",
    "local_mse_after",
    "train_s",
    "test_mse",
    "test_r2",
    "mining_s",
    "nonce",
    "round_s",
    "server_cpu_s",
    "block_hash",
)


def metrics_path_for(chain_path: Path) -> Path:
    """Where a chain's metrics go by default: chain.jsonl -> chain.metrics.csv."""
    return chain_path.with_name(f"{chain_path.stem}.metrics.csv")


class MetricsFile:
    """Appends rows to PATH, made with its header at the first round (so a run that never
    starts leaves nothing), or continued if it is there (a resumed run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._writer: csv.DictWriter | None = None

    def add_round(self, rows: list[dict]) -> None:
        """Write one round's rows (a dict per client, keyed by COLUMNS) and flush them."""
        if self._writer is None:
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._file = self.path.open("a", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
            if fresh:
                self._writer.writeheader()
        self._writer.writerows({k: _cell(row.get(k)) for k in COLUMNS} for row in rows)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""  # pandas reads an empty cell as NaN
    return value
