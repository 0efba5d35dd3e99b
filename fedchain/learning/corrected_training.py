"""A client's local training corrected for drift: the PyGAD search on its own rows, plus the
difference between the global gradient and its own, plus a proximal term.

Plain local training (local_training.py) fits the client's rows, so averaging the clients' fits
lands on the weighted mean of their optima, not on the pooled one, when their rows differ. Here
the client minimises, from the received model x,

    f_i(w) + <G - g_i(x), w - x> + proximal x |w - x|² (in the client's standardised units),

where f_i is its MSE, g_i its gradient and G the global gradient at x (DANE, Shamir et al. 2014;
the control variates of SCAFFOLD, Karimireddy et al. 2020). At the pooled optimum G = 0 and the
correction cancels the client's own pull, so every client stays put: the pooled optimum is the
fixed point. The proximal term keeps the step bounded along directions the client's rows cannot
see (a column constant on the client, two equal columns), which the correction may still push
along; those directions are searched too, unlike in plain training.

Coordinates: each column that varies, centred and standardised by the client's spread; each
constant non-zero column scaled by its value; the intercept as the prediction at the client's
mean. All in units of the client's spread of y. A column that is zero on every row keeps its
weight: the rows give no scale for it, and other clients move it.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedchain import settings
from fedchain.learning.evolution import Bowl, search_bowl
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.local_training import (
    MAX_STANDARDISED_LOSS,
    TOLERANCE,
    LocalProblem,
    TrainingResult,
)


def gradient(problem: LocalProblem, model: LinearModel) -> np.ndarray:
    """The gradient of MODEL's MSE on the client's rows: the weights', then the bias's."""
    if model.n_features != problem.n_features:
        raise ValueError(
            f"the model has {model.n_features} weights for {problem.n_features} columns"
        )
    if problem.moments is not None:
        return problem.moments.gradient(model)
    with np.errstate(over="ignore", invalid="ignore"):
        residual = problem.X @ model.weights + model.bias - problem.y
        n = len(problem.y)
        result = np.append(2.0 * (residual @ problem.X) / n, 2.0 * residual.sum() / n)
    if not np.all(np.isfinite(result)):
        raise ValueError("the model is too large to take its gradient on these rows")
    return result


@dataclass(frozen=True, eq=False)
class _Coordinates:
    """The client's rows in the coordinates the corrected search moves in (see the module)."""

    varying: np.ndarray  # (n_features,) bool
    constant: np.ndarray  # (n_features,) bool: constant and non-zero
    x_mean: np.ndarray  # (n_features,): for a constant column, its value
    x_scale: np.ndarray  # (n_varying,)
    constant_scale: np.ndarray  # (n_constant,): |value|
    y_mean: float
    y_scale: float
    curvature: np.ndarray  # (n_varying,): eigenvalues of the standardised columns' Gram / n
    basis: np.ndarray  # (n_varying, n_varying): their eigenvectors
    moment: np.ndarray  # (n_varying,): standardised columns · standardised y / n, in the basis
    t_square: float

    @classmethod
    def of(cls, problem: LocalProblem) -> "_Coordinates":
        if problem.moments is not None:  # noisy sums: every column varies, already whitened
            p, none = problem, np.zeros(problem.n_features, dtype=bool)
            return cls(
                p.seen,
                none,
                p.x_mean,
                p.x_scale,
                np.zeros(0),
                p.y_mean,
                p.y_scale,
                p.curvature,
                p.basis,
                p.moment,
                p.t_square,
            )
        X, y, n = problem.X, problem.y, len(problem.y)
        varying = ~np.equal(X, X[0]).all(axis=0)
        constant = ~varying & (X[0] != 0)
        with np.errstate(over="ignore", invalid="ignore"):  # too large is refused below
            x_mean = X.mean(axis=0)
            x_mean[~varying] = X[0, ~varying]
            Z = X[:, varying] - x_mean[varying]
            x_scale = np.sqrt(np.einsum("ij,ij->j", Z, Z) / n)
            x_scale = np.where(x_scale > 0, x_scale, 1.0)
            Z /= x_scale
            y_mean = float(y.mean())
            t = y - y_mean
            y_scale = float(np.sqrt(t @ t / n)) or 1.0
            t /= y_scale
            gram, moment = Z.T @ Z / n, Z.T @ t / n
        if not (np.all(np.isfinite(gram)) and np.all(np.isfinite(moment))):
            raise ValueError("the data's values are too large to square in float64")
        curvature, basis = np.linalg.eigh(gram)
        return cls(
            varying,
            constant,
            x_mean,
            x_scale,
            np.abs(X[0, constant]),
            y_mean,
            y_scale,
            np.maximum(curvature, 0.0),
            basis,
            basis.T @ moment,
            float(t @ t) / n,
        )


class _CorrectedWhitening:
    """Genes: the step along each eigendirection of the varying columns, times
    sqrt(curvature + proximal); along each constant column, times sqrt(proximal); and of the
    intercept, times sqrt(1 + proximal). The bowl is the standardised corrected objective."""

    def __init__(
        self,
        coordinates: _Coordinates,
        received: LinearModel,
        correction: np.ndarray,
        proximal: float,
    ) -> None:
        self.c, self.received, self.proximal = coordinates, received, proximal
        self.varying_stretch = 1.0 / np.sqrt(coordinates.curvature + proximal)
        self.constant_stretch = 1.0 / np.sqrt(proximal)
        self.intercept_stretch = 1.0 / np.sqrt(1.0 + proximal)
        self.correction = correction

    def bowl(self) -> Bowl:
        c, w = self.c, self.received.weights
        e_w, e_b = self.correction[:-1], self.correction[-1]
        with np.errstate(over="ignore", invalid="ignore"):
            v = c.basis.T @ (w[c.varying] * c.x_scale / c.y_scale)
            residual = (self.received.bias + w @ c.x_mean - c.y_mean) / c.y_scale
            loss = c.t_square - 2.0 * (c.moment @ v) + (c.curvature * v) @ v + residual**2
            # The correction <e, Δθ>, Δθ written in these coordinates, over y_scale² (the
            # standardised objective): a weight's step moves the bias by -x_mean x it, since the
            # intercept coordinate holds the prediction at the client's mean.
            shifted = e_w - e_b * c.x_mean
            varying = c.basis.T @ (shifted[c.varying] / c.x_scale) / c.y_scale
            constant = shifted[c.constant] / c.constant_scale / c.y_scale
            intercept = e_b / c.y_scale
            half_slope = np.concatenate(
                [
                    ((c.curvature * v - c.moment) + 0.5 * varying) * self.varying_stretch,
                    0.5 * constant * self.constant_stretch,
                    [(residual + 0.5 * intercept) * self.intercept_stretch],
                ]
            )
            finite = abs(loss) < MAX_STANDARDISED_LOSS and np.all(np.isfinite(half_slope))
            finite = finite and np.max(np.abs(half_slope), initial=0.0) ** 2 < MAX_STANDARDISED_LOSS
        if not finite:
            raise ValueError("the received model or correction is too large for these rows")
        return Bowl(float(loss), half_slope, np.zeros(half_slope.size))

    def to_model(self, genes: np.ndarray) -> LinearModel:
        c = self.c
        n_varying, n_constant = c.curvature.size, c.constant_scale.size
        steps = np.zeros(self.received.n_features)
        varying = c.basis @ (genes[:n_varying] * self.varying_stretch)
        steps[c.varying] = varying * c.y_scale / c.x_scale
        constant = genes[n_varying : n_varying + n_constant] * self.constant_stretch
        steps[c.constant] = constant * c.y_scale / c.constant_scale
        intercept_step = genes[-1] * self.intercept_stretch * c.y_scale
        # Only the weights searched move: a zero column's keeps its bits (-0.0 + 0.0 is 0.0).
        moved = c.varying | c.constant
        weights = self.received.weights.copy()
        weights[moved] += steps[moved]
        bias = self.received.bias + intercept_step - steps @ c.x_mean
        return LinearModel(weights, bias)


class CorrectedProblem:
    """A client's rows, with the coordinates of the corrected search worked out once."""

    def __init__(self, problem: LocalProblem) -> None:
        self.problem = problem

    @cached_property
    def coordinates(self) -> _Coordinates:
        return _Coordinates.of(self.problem)


def train_corrected(
    corrected: CorrectedProblem,
    received: LinearModel,
    global_gradient: np.ndarray,
    *,
    seed: int,
    proximal: float,
    generations: int = settings.GENERATIONS,
    population: int = settings.POPULATION,
    tolerance: float = TOLERANCE,
) -> TrainingResult:
    """Search from RECEIVED for the model that minimises the corrected objective, GLOBAL_GRADIENT
    being the gradient of the pooled MSE at RECEIVED (weights, then bias). The MSEs returned are
    on the client's rows; the one after may be higher, since the client now leans towards the
    pooled fit."""
    problem = corrected.problem
    if generations < 1 or population < 4:
        raise ValueError("local training needs at least 1 generation and a population of 4")
    if not (proximal > 0 and np.isfinite(proximal)):
        raise ValueError(f"the proximal weight must be positive, not {proximal}")
    if received.n_features != problem.n_features:
        raise ValueError(
            f"the model has {received.n_features} weights for {problem.n_features} columns"
        )
    global_gradient = np.asarray(global_gradient, dtype=np.float64)
    if global_gradient.shape != (problem.n_features + 1,):
        raise ValueError(
            f"the global gradient must be a vector of {problem.n_features + 1} "
            f"numbers, not shape {global_gradient.shape}"
        )
    if not np.all(np.isfinite(global_gradient)):
        raise ValueError("the global gradient holds NaN or infinity")
    correction = global_gradient - gradient(problem, received)
    coordinates = corrected.coordinates
    whitening = _CorrectedWhitening(coordinates, received, correction, proximal)
    bowl = whitening.bowl()
    before = problem.mse(received)
    # The corrected objective can go below zero, so its own value is no scale to stop by; the
    # client's MSE is, as in plain training: a search need not resolve finer than its rows can.
    # (Taken from the rows, not the bowl: near an exact fit the bowl's terms cancel to noise.)
    genes = search_bowl(
        bowl,
        seed=seed,
        generations=generations,
        population=population,
        tolerance_per_gene=tolerance / problem.n_samples,
        scale=before / coordinates.y_scale**2,
    )
    trained = whitening.to_model(genes)
    return TrainingResult(trained, before, problem.mse(trained))
