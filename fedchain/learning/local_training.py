"""A client's local training: a PyGAD evolutionary search for the linear model that fits its rows.

The search moves the received model only along the directions the client's rows can see (the row
space of its centred, standardised columns), in coordinates whitened by the client's curvature
there, so the fitness is a round bowl whatever the data's scales and correlations, and a weight
the rows say nothing about comes back with the bits it was received with. The bowl is scored from
the client's sums, so a generation costs the same whatever the number of rows. The model it
returns is in data units.
"""

import hashlib
import statistics
from dataclasses import dataclass

import numpy as np
import pygad

from fedchain import settings
from fedchain.learning.linear_model import LinearModel, mse

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
BLOCK_GENES = 64  # the most genes one PyGAD run searches; PyGAD's bookkeeping costs per gene
PROBE_STEP = 1e-4  # the first generation's spread, as a fraction of the start's distance bound


@dataclass(frozen=True, eq=False)
class LocalProblem:
    """A client's rows reduced to their scaling, the directions they can see, and their sums."""

    X: np.ndarray
    y: np.ndarray
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
            X, y, x_mean, seen, group, copies, x_scale, y_mean, y_scale,
            basis, hidden, curvature[visible], basis.T @ moment, t_square,
        )  # fmt: skip

    @property
    def n_features(self) -> int:
        return self.x_mean.size

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
        problem, received, seed=seed, generations=generations, population=population,
        proximal=proximal, tolerance=tolerance,
    ).model  # fmt: skip


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
    genes = bowl.start.copy()
    # Sampling noise puts MSE x genes / rows into even an exact fit; a block of genes may stop
    # at TOLERANCE of its share of that.
    tolerance_per_gene = tolerance / len(problem.y)
    # A whitened bowl is a sum of independent one-gene bowls, so blocks of genes can be searched
    # one after another (cooperative coevolution, Potter and De Jong 1994) at no loss, and short
    # solutions make PyGAD's per-gene bookkeeping far cheaper.
    n_blocks = -(-genes.size // BLOCK_GENES)
    for index, block in enumerate(np.array_split(np.arange(genes.size), n_blocks)):
        search = _Search(bowl.part(genes, block), population, tolerance_per_gene * block.size)
        ga = pygad.GA(
            num_generations=generations,
            num_parents_mating=population // 2,
            fitness_func=search.fitness,
            fitness_batch_size=population,
            initial_population=search.initial_population(seed, index),
            gene_type=float,
            parent_selection_type="sss",
            keep_elitism=0,
            keep_parents=0,
            crossover_type=search.recombine,
            mutation_type=search.mutate,
            on_generation=search.check,
            random_seed=int(np.random.SeedSequence([seed, index]).generate_state(1)[0]),
            suppress_warnings=True,
        )
        ga.run()
        genes[block] = search.best_genes
    trained = whitening.to_model(genes)
    # The trip through whitened coordinates rounds; judge on the raw rows so the promise holds
    # bit for bit.
    before = mse(received, problem.X, problem.y)
    after = mse(trained, problem.X, problem.y)
    if after <= before:
        return TrainingResult(trained, before, after)
    return TrainingResult(received, before, before)


MAX_STANDARDISED_LOSS = 1e150  # a received model this far off is refused, not searched from


@dataclass(frozen=True)
class _Bowl:
    """F(z) = offset + 2·gradient·z + |z|²: the fitness, to be minimised, in whitened genes."""

    offset: float
    gradient: np.ndarray
    start: np.ndarray

    def __call__(self, population: np.ndarray) -> np.ndarray:
        return self.offset + 2.0 * (population @ self.gradient) + (population * population).sum(1)

    def part(self, genes: np.ndarray, block: np.ndarray) -> "_Bowl":
        """The bowl of the genes in BLOCK, the others held at GENES."""
        x, g = genes[block], self.gradient[block]
        held = self.offset + 2.0 * (genes @ self.gradient) + genes @ genes - 2.0 * (x @ g) - x @ x
        return _Bowl(float(held), g, x)


@dataclass(frozen=True)
class _Whitening:
    """Genes: the step from the received weights along each visible direction, times
    sqrt(curvature + proximal); then the intercept, in units of the client's spread of y.
    The fitness is the standardised MSE plus the proximal term."""

    problem: LocalProblem
    received: LinearModel
    stretch: np.ndarray  # 1 / sqrt(curvature + proximal)

    def bowl(self) -> _Bowl:
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
        return _Bowl(float(offset), gradient, np.append(np.zeros(p.rank), c))

    def to_model(self, genes: np.ndarray) -> LinearModel:
        p = self.problem
        step = p.basis @ (genes[:-1] * self.stretch)
        # The basis is orthogonal to what the rows cannot see only up to rounding, which a long
        # step along a flat direction magnifies; take out what is left.
        step -= p.hidden @ (p.hidden.T @ step)
        w = self.received.weights.copy()
        w[p.seen] += (step * p.y_scale / (p.x_scale * np.sqrt(p.copies)))[p.group]
        return LinearModel(w, p.y_mean + p.y_scale * genes[-1] - w @ p.x_mean)


class _Search:
    """A (μ/μ_W, λ) evolution strategy (Beyer 2001) run by PyGAD on one bowl: its state between
    PyGAD's calls.

    Each generation PyGAD keeps the better half as parents (steady-state selection), the crossover
    blends them, weighted by rank, into one recombinant, and the mutation sends every child but
    the first from there by one Gaussian step. The step follows how far the recombinant still is
    from the bottom, which the children's fitness tells exactly in these coordinates.
    """

    def __init__(self, bowl: _Bowl, population: int, tolerance: float) -> None:
        self.bowl = bowl
        self.tolerance = tolerance
        self.n_genes = bowl.start.size
        ranks = np.arange(1, population // 2 + 1)
        weights = np.log((population + 1) / 2) - np.log(ranks)
        self.weights = weights / weights.sum()
        # The step that maximises progress on a round bowl: the recombinant's expected gain
        # from ranking the children (Blom's order statistics), tempered where genes are few.
        normal = statistics.NormalDist()
        order = [normal.inv_cdf((population - i + 0.625) / (population + 0.25)) for i in ranks]
        gain = float(self.weights @ order) / float(self.weights @ self.weights)
        self.step_per_distance = gain / (1 + 0.25 * gain / np.sqrt(self.n_genes)) / self.n_genes
        # F >= 0, so the start is at most sqrt(F) from the bottom; the first generation only
        # probes, with a step far too small to do harm, and the next one knows the distance.
        start_fitness = float(bowl(bowl.start[None, :])[0])
        self.step = PROBE_STEP * np.sqrt(max(start_fitness, 0.0) / self.n_genes)
        self.squares = np.zeros(population - 1)  # |step direction|² of children 1..
        self.distance2: float | None = None  # the last generation's recombinant's, once known
        self.best_genes = bowl.start
        self.best_fitness = -start_fitness

    def initial_population(self, seed: int, block_index: int) -> np.ndarray:
        self.rng = np.random.default_rng([seed, block_index])
        return np.vstack([self.bowl.start, self.bowl.start + self._steps(len(self.squares))])

    def fitness(self, _ga: pygad.GA, population: np.ndarray, _indices) -> np.ndarray:
        return -self.bowl(population)

    def recombine(self, parents: np.ndarray, offspring_size: tuple, _ga: pygad.GA) -> np.ndarray:
        return np.broadcast_to(self.weights @ parents, offspring_size).copy()

    def mutate(self, offspring: np.ndarray, ga: pygad.GA) -> np.ndarray:
        if self.distance2 is None:  # after the first generation, which PyGAD does not check
            self.distance2 = self._distance2(ga.last_generation_fitness)
        self.step = self.step_per_distance * np.sqrt(self.distance2)
        self.distance2 = None
        offspring[1:] += self._steps(len(offspring) - 1)
        return offspring

    def check(self, ga: pygad.GA) -> str | None:
        fitness = ga.last_generation_fitness
        best = int(np.argmax(fitness))
        if fitness[best] > self.best_fitness:
            self.best_fitness = float(fitness[best])
            self.best_genes = ga.population[best].copy()
        self.distance2 = self._distance2(fitness)
        return "stop" if self.distance2 <= self.tolerance * -fitness[0] else None

    def _steps(self, n_children: int) -> np.ndarray:
        directions = self.rng.standard_normal((n_children, self.n_genes))
        self.squares = np.einsum("ij,ij->i", directions, directions)
        return self.step * directions

    def _distance2(self, fitness: np.ndarray) -> float:
        # For child x + s·e of recombinant x, F(x + s·e) - F(x) - s²|e|² = 2s·(x - bottom)·e, and
        # the mean square of (x - bottom)·e over random directions e is |x - bottom|².
        if self.step == 0:
            return 0.0
        linear = (fitness[0] - fitness[1:]) - self.step**2 * self.squares
        return float(linear @ linear) / (4.0 * self.step**2 * len(linear))


def _nonzero(scale: np.ndarray) -> np.ndarray:
    # Constant columns are left out already; this only keeps rounding from dividing by zero.
    return np.where(scale > 0, scale, 1.0)
