"""Synthetic regression rows, wide and correlated, for the tests and the benchmark.

X ~ N(0, S) with S_jk = rho^|j-k| (neighbouring columns correlate, as measurements often do), each
column then put on its own scale (0.1 to 10) and offset (-5 to 5), as raw data comes. The target
is y = X·w* + 3 + noise, w* ~ N(0, 1) in standardised units, with the noise sized so that the
true model explains R2 of y's variance. The seed fixes the model (w*, scales, offsets); DRAW picks
independent rows from it, so draw 1 can be the held-out rows of draw 0.
"""

import numpy as np

from fedchain.learning.dataset import Dataset

CORRELATION = 0.5  # rho
R2 = 0.8  # about what lstsq reaches on the bundled data
BIAS = 3.0
TARGET = "y"


def synthetic_dataset(
    n_samples: int,
    n_features: int,
    *,
    seed: int = 0,
    draw: int = 0,
    correlation: float = CORRELATION,
    r2: float = R2,
) -> Dataset:
    """N_SAMPLES rows of N_FEATURES correlated columns and their noisy linear target."""
    model = np.random.default_rng(seed)
    w = model.standard_normal(n_features)
    scale = np.exp(model.uniform(np.log(0.1), np.log(10), n_features))
    offset = model.uniform(-5, 5, n_features)
    lags = np.abs(np.subtract.outer(np.arange(n_features), np.arange(n_features)))
    noise_sd = np.sqrt(float(w @ correlation**lags @ w) * (1 - r2) / r2)

    rows = np.random.default_rng([seed, draw])
    X = rows.standard_normal((n_samples, n_features))
    for j in range(1, n_features):  # AR(1) across the columns keeps each one's variance at 1
        X[:, j] = correlation * X[:, j - 1] + np.sqrt(1 - correlation**2) * X[:, j]
    y = X @ w + BIAS + noise_sd * rows.standard_normal(n_samples)
    names = tuple(f"x{j + 1}" for j in range(n_features))
    return Dataset(names, X * scale + offset, y)
