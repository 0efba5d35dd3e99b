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
# A candidate this close to the start, against the start's largest parameter, is rounding.
NEGLIGIBLE_STEP = 1e-12
# No coefficient beyond this: a line search that far out follows the gradients' rounding.
MAX_COEFFICIENT = 1e6
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
        sizes = {
            "coefficients": 2,
            "gradient": n_parameters,
            "step": n_parameters,
            "step_change": n_parameters,
        }
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
    at_start = _weighted_mean(contributions, lambda c: c.gradient)
    at_candidate = _weighted_mean(contributions, lambda c: c.probe_gradient)
    with np.errstate(over="ignore"):  # a difference past float64 measures no curvature (_dot)
        d = _vector(candidate(contributions)) - x
        change = at_candidate - at_start  # H d
    directions = []
    # A candidate within rounding of the start (the clients all sent it back) measures no
    # curvature, only the gradients' rounding: there is no direction to go along then.
    if np.max(np.abs(d)) > NEGLIGIBLE_STEP * np.max(np.abs(x)):
        directions.append((d, change))
    if previous is not None and any(previous.step):
        directions.append((np.array(previous.step), np.array(previous.step_change)))
    coefficients = _least_on_plane(directions, at_start)
    step, step_change = np.zeros(size), np.zeros(size)
    with np.errstate(over="ignore", invalid="ignore"):
        for coefficient, (direction, direction_change) in zip(
            coefficients, directions, strict=False
        ):
            step = step + coefficient * direction
            step_change = step_change + coefficient * direction_change
        new = x + step
        new_gradient = at_start + step_change
    if not (
        np.all(np.isfinite(new))
        and np.all(np.isfinite(new_gradient))
        and np.all(np.isfinite(step_change))
    ):
        coefficients = []
        new, new_gradient = x, at_start
        step = step_change = np.zeros(size)
    alpha, beta = _as_pair(coefficients, directions, d)
    record = SearchRecord((alpha, beta), _floats(new_gradient), _floats(step), _floats(step_change))
    return LinearModel(new[:-1], float(new[-1])), record


def _least_on_plane(
    directions: list[tuple[np.ndarray, np.ndarray]], gradient: np.ndarray
) -> list[float]:
    """The coefficients of the directions (each given with the curvature times it) that
    minimise the quadratic whose gradient at the origin is GRADIENT; fewer if the plane is
    degenerate, none if no direction has a positive curvature."""
    # f(x + a·d + b·s) = f(x) + (a·d + b·s)·g + ½ [a b] Q [a b]ᵀ, with Q_ij = dir_i · H dir_j.
    q = [[_dot(u, hv) for _, hv in directions] for u, _ in directions]
    r = [-_dot(u, gradient) for u, _ in directions]
    if len(directions) == 2:
        q12 = (q[0][1] + q[1][0]) / 2.0  # H is symmetric; rounding makes it less so
        determinant = q[0][0] * q[1][1] - q12 * q12
        if (
            q[0][0] > 0
            and q[1][1] > 0
            and math.isfinite(determinant)
            and determinant > MIN_PLANE_DETERMINANT * q[0][0] * q[1][1]
        ):
            pair = [
                (r[0] * q[1][1] - r[1] * q12) / determinant,
                (q[0][0] * r[1] - q12 * r[0]) / determinant,
            ]
            if all(abs(c) <= MAX_COEFFICIENT for c in pair):
                return pair
    # Along the first direction alone; a curvature that is not positive (gradients that
    # contradict a quadratic) takes no step at all, and a step far beyond the direction's own
    # length is cut back to it: beyond, the curvature measured is rounding, not the rows'.
    if directions and q[0][0] > 0 and math.isfinite(q[0][0]) and math.isfinite(r[0]):
        return [max(-MAX_COEFFICIENT, min(MAX_COEFFICIENT, r[0] / q[0][0]))]
    return []


def _as_pair(
    coefficients: list[float], directions: list[tuple[np.ndarray, np.ndarray]], d: np.ndarray
) -> tuple[float, float]:
    """The coefficients as the block records them: along this round's d, along the last step."""
    pair = [0.0, 0.0]
    for coefficient, (direction, _) in zip(coefficients, directions, strict=False):
        pair[0 if direction is d else 1] = float(coefficient)
    return pair[0], pair[1]


def _weighted_mean(contributions: Sequence[Contribution], which) -> np.ndarray:
    total = float(sum(c.n_samples for c in contributions))
    columns = zip(*[[float(c.n_samples) * v for v in which(c)] for c in contributions], strict=True)
    # The wire caps every number at 1e100, but a chain file holds any finite float: a sum past
    # float64 must be a verdict (ValueError), not fsum's OverflowError (or inf - inf's ValueError).
    try:
        mean = np.array([math.fsum(column) / total for column in columns])
    except (OverflowError, ValueError):
        mean = np.array([math.inf])
    if not np.all(np.isfinite(mean)):
        raise ValueError("the clients' gradients are too large to average in float64 (overflow)")
    return mean


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        products = a * b
    if not np.all(np.isfinite(products)):
        return math.nan
    try:
        return math.fsum(products)
    except OverflowError:  # finite terms whose sum is not: no curvature to go by
        return math.nan


def _vector(model: LinearModel) -> np.ndarray:
    return np.append(model.weights, model.bias)


def _floats(vector: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in vector)
