"""Synthetic regression rows, wide and correlated, for the tests and the benchmark.

X ~ N(0, S) with S_jk = rho^|j-k| (neighbouring columns correlate, as measurements often do), each
column then put on its own scale (0.1 to 10) and offset (-5 to 5), as raw data comes. The target
is y = X·w* + 3 + noise, w* ~ N(0, 1) in standardised units, with the noise sized so that the
true model explains R2 of y's variance. The seed fixes the model (w*, scales, offsets); DRAW picks
independent rows from it, so draw 1 can be the held-out rows of draw 0.

BOUNDED columns are uniform instead (each Gaussian column through its CDF, which keeps them
correlated), so each lies within sqrt(3) of its standard deviations of its offset: the public
schema of such rows names those bounds, and bounds y at 4 of its standard deviations, all from the
model alone.
"""

import math

import numpy as np
from scipy.special import ndtr

from fedchain.learning.dataset import Dataset
from fedchain.learning.schema import Schema

CORRELATION = 0.5  # rho
R2 = 0.8  # about what lstsq reaches on the bundled data
BIAS = 3.0
TARGET = "y"
Y_BOUND_SDS = 4.0  # the schema's half-width for y, in standard deviations (1 in 16,000 is cut)
UNIFORM_HALF_WIDTH = math.sqrt(3.0)  # a uniform column of standard deviation 1 spans ±sqrt(3)


def synthetic_dataset(
    n_samples: int,
    n_features: int,
    *,
    seed: int = 0,
    draw: int = 0,
    correlation: float = CORRELATION,
    r2: float = R2,
    bounded: bool = False,
) -> Dataset:
    """N_SAMPLES rows of N_FEATURES correlated columns and their noisy linear target."""
    w, scale, offset, noise_sd = _model(n_features, seed, correlation, r2, bounded)
    rows = np.random.default_rng([seed, draw])
    X = rows.standard_normal((n_samples, n_features))
    for j in range(1, n_features):  # AR(1) across the columns keeps each one's variance at 1
        X[:, j] = correlation * X[:, j - 1] + np.sqrt(1 - correlation**2) * X[:, j]
    if bounded:
        X = (2.0 * ndtr(X) - 1.0) * UNIFORM_HALF_WIDTH
    y = X @ w + BIAS + noise_sd * rows.standard_normal(n_samples)
    return Dataset(_names(n_features), X * scale + offset, y)


def synthetic_schema(
    n_features: int, *, seed: int = 0, correlation: float = CORRELATION, r2: float = R2
) -> Schema:
    """Public bounds for the rows of synthetic_dataset(..., bounded=True) with the same model,
    worked out from the model alone."""
    w, scale, offset, noise_sd = _model(n_features, seed, correlation, r2, bounded=True)
    y_sd = float(np.sqrt(w @ _correlations(n_features, correlation, True) @ w + noise_sd**2))
    bounds = {
        name: (float(mean - UNIFORM_HALF_WIDTH * sd), float(mean + UNIFORM_HALF_WIDTH * sd))
        for name, mean, sd in zip(_names(n_features), offset, scale, strict=True)
    }
    bounds[TARGET] = (BIAS - Y_BOUND_SDS * y_sd, BIAS + Y_BOUND_SDS * y_sd)
    return Schema(bounds)


def _model(n_features: int, seed: int, correlation: float, r2: float, bounded: bool) -> tuple:
    """The model a seed fixes: w*, the columns' scales and offsets, and the noise's sd."""
    model = np.random.default_rng(seed)
    w = model.standard_normal(n_features)
    scale = np.exp(model.uniform(np.log(0.1), np.log(10), n_features))
    offset = model.uniform(-5, 5, n_features)
    signal = float(w @ _correlations(n_features, correlation, bounded) @ w)
    return w, scale, offset, np.sqrt(signal * (1 - r2) / r2)


def _correlations(n_features: int, correlation: float, bounded: bool) -> np.ndarray:
    lags = np.abs(np.subtract.outer(np.arange(n_features), np.arange(n_features)))
    gaussian = correlation**lags
    # Two Gaussians of correlation r, each through its CDF, correlate by (6 / pi) asin(r / 2).
    return 6.0 / np.pi * np.arcsin(gaussian / 2.0) if bounded else gaussian


def _names(n_features: int) -> tuple[str, ...]:
    return tuple(f"x{j + 1}" for j in range(n_features))
