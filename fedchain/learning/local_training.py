"""A client's local training: a PyGAD evolutionary search for the linear model that fits its rows.

The search moves the received model only along the directions the client's rows can see (the row
space of its centred, standardised columns), in coordinates whitened by the client's curvature
there, so the fitness is a round bowl whatever the data's scales and correlations, and a weight
the rows say nothing about comes back with the bits it was received with. The bowl is scored from
the client's sums, so a generation costs the same whatever the number of rows. The model it
returns is in data units.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from fedchain import settings
from fedchain.learning.evolution import Bowl, search_bowl
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.learning.moments import Moments

# A direction whose curvature is below this fraction of the largest is one the rows cannot see:
# rounding leaves ~1e-16 along a difference of two equal columns, real information far more.
RANK_TOLERANCE = 1e-10
# Stop once the estimated excess MSE left is below this fraction of the excess that sampling noise
# puts into even an exact fit of the client's rows (MSE x (rank + 1) / rows): searching further
# than the rows can tell buys nothing. (A block judges by the MSE with the other blocks as they
# stand, which in round 1 is still above the final one: its first blocks stop a little early,
# and the next rounds, which start near the fit, make up for it.)
TOLERANCE = 3e-3
PROXIMAL_WEIGHT = 1.0  # from round 2, in units of the client's standardised curvature


@dataclass(frozen=True, eq=False)
class LocalProblem:
    """A client's rows reduced to their scaling, the directions they can see, and their sums;
    or, for a differentially private client, its noisy sums alone (X and y are then None)."""

    X: np.ndarray | None
    y: np.ndarray | None
    x_mean: np.ndarray  # (n_features,); a constant column's mean is its value, exactly
    seen: np.ndarray  # (n_features,) bool: the columns that vary on this client
    group: np.ndarray  # (n_seen,): each seen column's distinct column; equal columns share one
    copies: np.ndarray  # (n_distinct,): how many seen columns each distinct column stands for
    x_scale: np.ndarray  # (n_distinct,)
    y_mean: float
    y_scale: float
    basis: np.ndarray  # (n_distinct, rank): orthonormal directions of the row space of Z
    hidden: np.ndarray  # (n_distinct, n_distinct - rank): the rest, which Z cannot see
    curvature: np.ndarray  # (rank,): ZᵀZ/n along each of them
    moment: np.ndarray  # (rank,): Zᵀt/n along each of them
    t_square: float  # tᵀt/n
    # Z: the distinct columns, centred, standardised and times sqrt(copies); t: y, likewise.
    moments: Moments | None = None  # the noisy sums a private client trains on, instead of rows

    @classmethod
    def from_data(cls, X: np.ndarray, y: np.ndarray) -> "LocalProblem":
        # Row-major, whatever the caller holds (pandas hands over columns): numpy sums a column
        # of a column-major array in an order that depends on where it sits in memory, and the
        # networked client must get the same bits as the simulation.
        X = np.ascontiguousarray(X, dtype=np.float64)
        y = np.ascontiguousarray(y, dtype=np.float64)
        n = len(y)
        seen = ~np.equal(X, X[0]).all(axis=0)
        # Equal columns are one column to these rows: the search moves their weights together,
        # by the same bits, so no difference between them is ever learned from rows that
        # cannot show one.
        first: dict[bytes, int] = {}
        seen_columns = np.flatnonzero(seen)
        group = np.array([first.setdefault(X[:, j].tobytes(), len(first)) for j in seen_columns])
        group = group.astype(np.intp)
        distinct = seen_columns[np.unique(group, return_index=True)[1]]
        copies = np.bincount(group, minlength=len(first)).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below
            x_mean = X.mean(axis=0)
            x_mean[~seen] = X[0, ~seen]
            Z = X[:, distinct] - x_mean[distinct]
            x_mean[seen] = x_mean[distinct][group]
            x_scale = _nonzero(np.sqrt(np.einsum("ij,ij->j", Z, Z) / n))
            Z *= np.sqrt(copies) / x_scale
            y_mean = float(y.mean())
            t = y - y_mean
            y_scale = float(_nonzero(np.sqrt(np.array([t @ t]) / n))[0])
            t /= y_scale
            gram, moment, t_square = Z.T @ Z / n, Z.T @ t / n, float(t @ t) / n
        sums = np.concatenate([x_mean, x_scale, [y_mean, y_scale, t_square], moment, gram.ravel()])
        if not np.all(np.isfinite(sums)):
            raise ValueError("the data's values are too large to square in float64")
        curvature, vectors = np.linalg.eigh(gram)
        visible = curvature > RANK_TOLERANCE * curvature.max(initial=0.0)
        basis = np.ascontiguousarray(vectors[:, visible])
        hidden = np.ascontiguousarray(vectors[:, ~visible])
        return cls(
            X,
            y,
            x_mean,
            seen,
            group,
            copies,
            x_scale,
            y_mean,
            y_scale,
            basis,
            hidden,
            curvature[visible],
            basis.T @ moment,
            t_square,
        )

    @classmethod
    def from_moments(cls, moments: Moments) -> "LocalProblem":
        """The problem posed by a private client's noisy sums: every column counts as varying
        and distinct (noise hides which are not), so its sums must be positive definite."""
        d, n = moments.n_features, moments.count
        a = moments.gram / n
        x_mean = a[:d, d].copy()
        y_mean = float(a[d + 1, d])
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below
            covariance = a[:d, :d] - np.outer(x_mean, x_mean)
            x_scale = _nonzero(np.sqrt(np.maximum(np.diag(covariance), 0.0)))
            y_variance = float(a[d + 1, d + 1]) - y_mean * y_mean
            # Noise can leave y's variance at or below zero; any positive scale is only a unit.
            y_scale = float(np.sqrt(y_variance)) if y_variance > 0 else 1.0
            gram = covariance / np.outer(x_scale, x_scale)
            moment = (a[:d, d + 1] - x_mean * y_mean) / x_scale / y_scale
            t_square = y_variance / (y_scale * y_scale)
        sums = np.concatenate([gram.ravel(), moment, [t_square]])
        if not np.all(np.isfinite(sums)):
            raise ValueError("the sums' values are too large to use in float64")
        curvature, basis = np.linalg.eigh(gram)
        if not curvature[0] > RANK_TOLERANCE * curvature[-1]:
            raise ValueError("the noisy sums are not positive definite: nothing to search in")
        everything = np.ones(d, dtype=bool)
        return cls(
            None,
            None,
            x_mean,
            everything,
            np.arange(d),
            np.ones(d),
            x_scale,
            y_mean,
            y_scale,
            basis,
            np.zeros((d, 0)),
            curvature,
            basis.T @ moment,
            t_square,
            moments,
        )

    @property
    def n_features(self) -> int:
        return self.x_mean.size

    @property
    def n_samples(self) -> float:
        """The rows behind the problem (a private client's noisy count is not whole)."""
        return len(self.y) if self.moments is None else self.moments.count

    def mse(self, model: LinearModel) -> float:
        """MODEL's MSE on the client's rows, or on its noisy sums for a private client."""
        return mse(model, self.X, self.y) if self.moments is None else self.moments.mse(model)

    @property
    def rank(self) -> int:
        return self.curvature.size


@dataclass(frozen=True)
class TrainingResult:
    model: LinearModel
    received_mse: float  # both on the client's own rows
    trained_mse: float


def derive_seed(run_seed: int, client_name: str, round_index: int) -> int:
    """A 32-bit seed for one client's round, so the same inputs give bit-identical models."""
    digest = hashlib.sha256(f"{run_seed}/{client_name}/{round_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def proximal_weight(round_index: int) -> float:
    """The proximal weight of a round's search: none in round 1, PROXIMAL_WEIGHT after."""
    # Round 1 starts far from every client's fit, where the clients agree on the way, so a full
    # local step is fastest. Once near, each client whitening with its own noisy curvature makes
    # the average of full local steps settle short of the pooled fit (client drift: 1.0028 x the
    # pooled lstsq MSE with 1,000 features on 10,000 rows a client). A proximal term (FedProx,
    # Li et al. 2020) shares part of the curvature between clients, so their average keeps
    # closing in on the pooled fit instead.
    return 0.0 if round_index <= 1 else PROXIMAL_WEIGHT


def train_locally(
    problem: LocalProblem,
    received: LinearModel,
    *,
    seed: int,
    generations: int = settings.GENERATIONS,
    population: int = settings.POPULATION,
    proximal: float = 0.0,
    tolerance: float = TOLERANCE,
) -> LinearModel:
    """Search from RECEIVED for a better model on the client's rows; never return a worse one."""
    return train_and_score(
        problem,
        received,
        seed=seed,
        generations=generations,
        population=population,
        proximal=proximal,
        tolerance=tolerance,
    ).model


def train_and_score(
    problem: LocalProblem,
    received: LinearModel,
    *,
    seed: int,
    generations: int = settings.GENERATIONS,
    population: int = settings.POPULATION,
    proximal: float = 0.0,
    tolerance: float = TOLERANCE,
) -> TrainingResult:
    """train_locally, with the MSE on the client's rows before and after.

    PROXIMAL adds PROXIMAL x |standardised weight change|² to the fitness; GENERATIONS caps each
    PyGAD run (one per block of at most BLOCK_GENES genes), which stops sooner once converged.
    """
    if generations < 1 or population < 4:
        raise ValueError("local training needs at least 1 generation and a population of 4")
    if not proximal >= 0:
        raise ValueError(f"the proximal weight must be 0 or more, not {proximal}")
    if received.n_features != problem.n_features:
        raise ValueError(
            f"the model has {received.n_features} weights for {problem.n_features} columns"
        )
    whitening = _Whitening(problem, received, 1.0 / np.sqrt(problem.curvature + proximal))
    bowl = whitening.bowl()
    # Sampling noise puts MSE x genes / rows into even an exact fit; a block of genes may stop
    # at TOLERANCE of its share of that.
    tolerance_per_gene = tolerance / problem.n_samples
    genes = search_bowl(
        bowl,
        seed=seed,
        generations=generations,
        population=population,
        tolerance_per_gene=tolerance_per_gene,
    )
    trained = whitening.to_model(genes)
    # The trip through whitened coordinates rounds; judge on the raw rows so the promise holds
    # bit for bit.
    before = problem.mse(received)
    after = problem.mse(trained)
    if after <= before:
        return TrainingResult(trained, before, after)
    return TrainingResult(received, before, before)


MAX_STANDARDISED_LOSS = 1e150  # a received model this far off is refused, not searched from


@dataclass(frozen=True)
class _Whitening:
    """Genes: the step from the received weights along each visible direction, times
    sqrt(curvature + proximal); then the intercept, in units of the client's spread of y.
    The fitness is the standardised MSE plus the proximal term."""

    problem: LocalProblem
    received: LinearModel
    stretch: np.ndarray  # 1 / sqrt(curvature + proximal)

    def bowl(self) -> Bowl:
        p, w = self.problem, self.received.weights
        with np.errstate(over="ignore", invalid="ignore"):
            summed = np.bincount(p.group, weights=w[p.seen], minlength=p.copies.size)
            v = p.basis.T @ (summed * p.x_scale / np.sqrt(p.copies) / p.y_scale)
            c = (self.received.bias + w @ p.x_mean - p.y_mean) / p.y_scale
            offset = p.t_square - 2.0 * (p.moment @ v) + (p.curvature * v) @ v
            gradient = np.append((p.curvature * v - p.moment) * self.stretch, 0.0)
            # Headroom: the search squares and mixes numbers of this size, so one near the top
            # of the float range would overflow inside PyGAD instead of failing here, clearly.
            finite = abs(offset + c * c) < MAX_STANDARDISED_LOSS and np.all(np.isfinite(gradient))
        if not finite:
            raise ValueError("the received model is too large to evaluate on these rows")
        return Bowl(float(offset), gradient, np.append(np.zeros(p.rank), c))

    def to_model(self, genes: np.ndarray) -> LinearModel:
        p = self.problem
        step = p.basis @ (genes[:-1] * self.stretch)
        # The basis is orthogonal to what the rows cannot see only up to rounding, which a long
        # step along a flat direction magnifies; take out what is left.
        step -= p.hidden @ (p.hidden.T @ step)
        w = self.received.weights.copy()
        w[p.seen] += (step * p.y_scale / (p.x_scale * np.sqrt(p.copies)))[p.group]
        return LinearModel(w, p.y_mean + p.y_scale * genes[-1] - w @ p.x_mean)


def _nonzero(scale: np.ndarray) -> np.ndarray:
    # Constant columns are left out already; this only keeps rounding from dividing by zero.
    return np.where(scale > 0, scale, 1.0)
