"""The linear-regression model y ≈ X·w + b and its quality measures.

Weights and bias are always in the data's own units, so a model read off the chain can be used
directly on raw rows. How a client searches for them is in local_training.py.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class LinearModel:
    weights: np.ndarray  # (n_features,), float64, read-only
    bias: float

    def __post_init__(self) -> None:
        weights = np.asarray(self.weights)
        if weights.dtype.kind not in "fiu":
            raise TypeError(f"weights must be numbers, not {weights.dtype}")
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(f"weights must be a non-empty vector, not shape {weights.shape}")
        weights = weights.astype(np.float64)  # always a private copy
        if not np.all(np.isfinite(weights)):
            raise ValueError("weights must be finite numbers (no NaN or infinity)")
        weights.flags.writeable = False
        if isinstance(self.bias, bool) or not isinstance(self.bias, int | float | np.number):
            raise TypeError(f"bias must be a number, not {type(self.bias).__name__}")
        bias = float(self.bias)
        if not np.isfinite(bias):
            raise ValueError("bias must be a finite number (no NaN or infinity)")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "bias", bias)

    @classmethod
    def zeros(cls, n_features: int) -> "LinearModel":
        return cls(np.zeros(n_features), 0.0)

    @property
    def n_features(self) -> int:
        return self.weights.size

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.weights + self.bias

    def __eq__(self, other: object) -> bool:
        """Equal means the same bits, as the chain compares them (so 0.0 != -0.0 here)."""
        if not isinstance(other, LinearModel):
            return NotImplemented
        return (
            self.weights.tobytes() == other.weights.tobytes()
            and np.float64(self.bias).tobytes() == np.float64(other.bias).tobytes()
        )

    def __hash__(self) -> int:
        return hash((self.weights.tobytes(), self.bias))


def mse(model: LinearModel, X: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of MODEL on the rows X, y."""
    residual = model.predict(X) - y
    return float(residual @ residual) / len(y)


def r2(model: LinearModel, X: np.ndarray, y: np.ndarray) -> float:
    """Coefficient of determination: 1 - MSE / variance of y."""
    return 1.0 - mse(model, X, y) / float(np.var(y))


def fit_lstsq(X: np.ndarray, y: np.ndarray) -> LinearModel:
    """Fit by ordinary least squares: the reference every search is measured against."""
    A = np.hstack([X, np.ones((len(X), 1))])
    theta = np.linalg.lstsq(A, y, rcond=None)[0]
    return LinearModel(theta[:-1], theta[-1])
