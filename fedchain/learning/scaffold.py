"""The drift-corrected rule, `scaffold`: how the server turns a round into the next global model.

A round: every client trains from the global model x with the correction (corrected_training.py)
and sends its model and its gradient at x; the server averages the models (FedAvg) into a
candidate c, and asks every client for its gradient at c (the probe). The pooled MSE is a
quadratic, so the change of the global gradient from x to c is its curvature along d = c - x,
exactly. The server then takes the point of least pooled MSE on the plane through x spanned by d
and the previous round's step s (a conjugate-gradient step; along d alone when there is no
previous step, or it was taken with other clients): never worse than x, nor than c. It also
works out the global gradient there, which the next round's clients correct by.

Damping by line search, rather than by trusting each client's step: with exact local solves a
plain correction diverges when a client's rows barely vary along some direction, and no single
proximal weight suits every split. Everything here is a pure function of what the block records,
summed with exact rounding (math.fsum), so every verifier gets the server's bits.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedchain.learning.aggregation import fedavg
from fedchain.learning.linear_model import LinearModel

# The default of the rule's parameter `proximal` (aggregation.PROXIMAL): the best of 0.3, 1
# and 3 on the benchmark's non-IID splits.
DEFAULT_PROXIMAL = 0.3
# The plane is used only if its two directions are this far from parallel (the determinant of
# the 2 x 2 curvature against the product of its diagonal): nearer, rounding decides the answer.
MIN_PLANE_DETERMINANT = 1e-9
RECORD_KEYS = ("coefficients", "gradient", "step", "step_change")


@dataclass(frozen=True)
class Contribution:
    """What one client sent in a round: its model, rows, and gradients at x and at c."""

    model: LinearModel
    n_samples: int
    gradient: tuple[float, ...]  # at the model it trained from (weights, then bias)
    probe_gradient: tuple[float, ...]  # at the round's candidate


@dataclass(frozen=True)
class SearchRecord:
    """What a scaffold round block records of the server's step, so the next can follow it."""

    coefficients: tuple[float, float]  # along this round's d, and along the previous step
    gradient: tuple[float, ...]  # the global gradient at the new model
    step: tuple[float, ...]  # the new model minus the one the round started from
    step_change: tuple[float, ...]  # the global gradient's change along that step

    def as_record(self) -> dict[str, tuple[float, ...]]:
        return {key: getattr(self, key) for key in RECORD_KEYS}

    @classmethod
    def from_record(cls, record: dict[str, tuple[float, ...]], n_parameters: int) -> "SearchRecord":
        """The record a block holds; ValueError unless it has exactly the keys and sizes."""
        if set(record) != set(RECORD_KEYS):
            raise ValueError(f"a scaffold block's search must record {', '.join(RECORD_KEYS)}")
        sizes = {"coefficients": 2, "gradient": n_parameters, "step": n_parameters,
                 "step_change": n_parameters}  # fmt: skip
        for key, size in sizes.items():
            if len(record[key]) != size:
                raise ValueError(f"the search's {key} has {len(record[key])} numbers, not {size}")
        return cls(*(tuple(record[key]) for key in RECORD_KEYS))


def candidate(contributions: Sequence[Contribution]) -> LinearModel:
    """The FedAvg of the round's models: the point the probe asks for gradients at."""
    return fedavg([(c.model, c.n_samples) for c in contributions])


def settle(
    start: LinearModel,
    previous: SearchRecord | None,
    contributions: Sequence[Contribution],
) -> tuple[LinearModel, SearchRecord]:
    """The round's global model and search record, from the model the clients trained from
    (START), the previous round's record if it was taken with the same clients, and theirs."""
    if not contributions:
        raise ValueError("scaffold needs at least one client's contribution")
    size = start.n_features + 1
    for c in contributions:
        if len(c.gradient) != size or len(c.probe_gradient) != size:
            raise ValueError(f"a client's gradient must have {size} numbers")
    x = _vector(start)
    d = _vector(candidate(contributions)) - x
    at_start = _weighted_mean(contributions, lambda c: c.gradient)
    change = _weighted_mean(contributions, lambda c: c.probe_gradient) - at_start  # H d
    directions = [(d, change)]
    if previous is not None and any(previous.step):
        directions.append((np.array(previous.step), np.array(previous.step_change)))
    alpha, beta = _least_on_plane(directions, at_start)
    if beta:
        s, s_change = directions[1]
        step, step_change = alpha * d + beta * s, alpha * change + beta * s_change
    else:
        step, step_change = alpha * d, alpha * change
    new = x + step
    new_gradient = at_start + step_change
    if not (np.all(np.isfinite(new)) and np.all(np.isfinite(new_gradient))
            and np.all(np.isfinite(step_change))):  # fmt: skip
        alpha = beta = 0.0
        new, new_gradient = x, at_start
        step = step_change = np.zeros(size)
    record = SearchRecord(
        (float(alpha), float(beta)), _floats(new_gradient), _floats(step), _floats(step_change)
    )
    return LinearModel(new[:-1], float(new[-1])), record


def _least_on_plane(
    directions: list[tuple[np.ndarray, np.ndarray]], gradient: np.ndarray
) -> tuple[float, float]:
    """The coefficients of the directions that minimise the quadratic whose gradient at the
    origin is GRADIENT and whose curvature times each direction is given with it."""
    # f(x + a·d + b·s) = f(x) + (a·d + b·s)·g + ½ [a b] Q [a b]ᵀ, with Q_ij = dir_i · H dir_j.
    d, hd = directions[0]
    q11, r1 = _dot(d, hd), -_dot(d, gradient)
    if len(directions) == 2:
        s, hs = directions[1]
        q22, r2 = _dot(s, hs), -_dot(s, gradient)
        q12 = (_dot(d, hs) + _dot(s, hd)) / 2.0  # H is symmetric; rounding makes it less so
        determinant = q11 * q22 - q12 * q12
        if (q11 > 0 and q22 > 0 and math.isfinite(determinant)
                and determinant > MIN_PLANE_DETERMINANT * q11 * q22):  # fmt: skip
            return (r1 * q22 - r2 * q12) / determinant, (q11 * r2 - q12 * r1) / determinant
    # Along d alone; a curvature that is not positive (no step, or gradients that contradict a
    # quadratic) takes no step at all.
    if q11 > 0 and math.isfinite(q11) and math.isfinite(r1):
        return r1 / q11, 0.0
    return 0.0, 0.0


def _weighted_mean(contributions: Sequence[Contribution], which) -> np.ndarray:
    total = float(sum(c.n_samples for c in contributions))
    columns = zip(*[[float(c.n_samples) * v for v in which(c)] for c in contributions], strict=True)
    return np.array([math.fsum(column) / total for column in columns])


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return math.fsum(a * b) if np.all(np.isfinite(a * b)) else math.nan


def _vector(model: LinearModel) -> np.ndarray:
    return np.append(model.weights, model.bias)


def _floats(vector: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in vector)
