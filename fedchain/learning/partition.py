"""Rows dealt out to clients, for the simulation, the demo and the benchmark: in file order
(near-IID), or sorted by a column or grouped by its values (non-IID: each client sees one kind
of row)."""

from collections.abc import Iterable

import numpy as np

from fedchain.learning.dataset import Dataset


def pool(datasets: Iterable[Dataset]) -> Dataset:
    """Every dataset's rows, one after another (the first names the columns)."""
    datasets = list(datasets)
    X = np.vstack([d.X for d in datasets])
    return Dataset(datasets[0].feature_names, X, np.concatenate([d.y for d in datasets]))


def split_rows(data: Dataset, n_clients: int) -> dict[str, Dataset]:
    """DATA's rows in N_CLIENTS consecutive shards of near-equal size, named cli01, cli02, ..."""
    width = len(str(n_clients))
    return {
        f"cli{i + 1:0{width}d}": Dataset(data.feature_names, data.X[rows], data.y[rows])
        for i, rows in enumerate(np.array_split(np.arange(data.n_samples), n_clients))
    }


def split_sorted(data: Dataset, column: str, n_clients: int) -> dict[str, Dataset]:
    """DATA's rows sorted by COLUMN (stably) and cut into N_CLIENTS shards: one range a client."""
    order = np.argsort(data.X[:, data.feature_names.index(column)], kind="stable")
    return split_rows(Dataset(data.feature_names, data.X[order], data.y[order]), n_clients)


def split_by_value(data: Dataset, column: str) -> dict[str, Dataset]:
    """One client per value of COLUMN, in increasing order: the column is constant on each."""
    values = data.X[:, data.feature_names.index(column)]
    return {
        f"cli{i + 1}": Dataset(data.feature_names, data.X[values == v], data.y[values == v])
        for i, v in enumerate(np.unique(values))
    }
