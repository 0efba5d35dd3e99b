"""Small real problems for the local-training tests: rows on very different scales, as raw data
has them, and a model to start from."""

import numpy as np

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
