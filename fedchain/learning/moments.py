"""A client's rows reduced to their second moments: all that a linear fit's error depends on.

With a = [x, 1, y] for each row, the sum of a·aᵀ gives every model's squared error, its gradient
and the least-squares fit. A differentially private client trains on a noisy copy of it
(privacy.py), so everything it sends follows from the noisy sums alone.
"""

from dataclasses import dataclass

import numpy as np

from fedchain.learning.linear_model import LinearModel


@dataclass(frozen=True, eq=False)
class Moments:
    """The sum over rows of [x, 1, y][x, 1, y]ᵀ: (n_features + 2) square, symmetric."""

    gram: np.ndarray

    def __post_init__(self) -> None:
        gram = np.array(self.gram, dtype=np.float64)  # a private copy
        if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 3:
            raise ValueError(f"moments must be a square matrix of 3 or more, not {gram.shape}")
        if not np.all(np.isfinite(gram)):
            raise ValueError("the moments must be finite numbers")
        if not gram[-2, -2] > 0:
            raise ValueError("the moments must count at least some rows")
        gram.flags.writeable = False
        object.__setattr__(self, "gram", gram)

    @classmethod
    def of_rows(cls, X: np.ndarray, y: np.ndarray) -> "Moments":
        rows = np.column_stack([X, np.ones(len(y)), y])
        return cls(rows.T @ rows)

    @property
    def n_features(self) -> int:
        return self.gram.shape[0] - 2

    @property
    def count(self) -> float:
        """The rows these sums stand for (after noise, not a whole number)."""
        return float(self.gram[-2, -2])

    def mse(self, model: LinearModel) -> float:
        """MODEL's mean squared error on the rows behind these sums."""
        theta = self._theta(model)
        # Rounding can take an exact fit a hair below zero, where a sum of squares cannot be.
        return max(float(theta @ self.gram @ theta) / self.count, 0.0)

    def gradient(self, model: LinearModel) -> np.ndarray:
        """The gradient of MODEL's MSE: the weights', then the bias's."""
        with np.errstate(over="ignore", invalid="ignore"):
            result = 2.0 * (self.gram @ self._theta(model))[:-1] / self.count
        if not np.all(np.isfinite(result)):
            raise ValueError("the model is too large to take its gradient on these sums")
        return result

    def _theta(self, model: LinearModel) -> np.ndarray:
        if model.n_features != self.n_features:
            raise ValueError(
                f"the model has {model.n_features} weights for {self.n_features} columns"
            )
        return np.concatenate([model.weights, [model.bias, -1.0]])
