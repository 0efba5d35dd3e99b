"""A client's local training: a PyGAD genetic search for the linear model that fits its own rows.

The search runs in coordinates standardised with the client's own statistics, where every gene has
a similar scale, and scores a whole population at once from the client's sums (ZᵀZ, Zᵀt, tᵀt), so a
generation costs the same whatever the number of rows. The model it returns is in data units.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import pygad

from fedchain import settings
from fedchain.learning.linear_model import LinearModel, mse

DEFAULT_SATURATION = 40  # stop early after this many generations without any improvement
ELITES = 2  # the best solutions carried over unchanged, so the best never gets worse
BLEND_ALPHA = 0.3  # how far a child may land outside the segment between its parents
MUTATION_SCALE = 0.45  # a mutation step, as a multiple of the population's spread in that gene
MIN_STEP = 1e-9  # keeps a collapsed population moving, in units of standardised y


@dataclass(frozen=True)
class LocalProblem:
    """A client's rows reduced to their scaling and the sums the fitness needs."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: float
    y_scale: float
    gram: np.ndarray  # ZᵀZ / n with Z = [standardised X | 1]
    moment: np.ndarray  # Zᵀt / n with t the standardised y
    t_square: float  # tᵀt / n
    X: np.ndarray
    y: np.ndarray

    @classmethod
    def from_data(cls, X: np.ndarray, y: np.ndarray) -> "LocalProblem":
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below
            x_mean = X.mean(axis=0)
            x_scale = _nonzero(X.std(axis=0))
            y_mean = float(y.mean())
            y_scale = float(_nonzero(np.array([y.std()]))[0])
            Z = np.hstack([(X - x_mean) / x_scale, np.ones((len(X), 1))])
            t = (y - y_mean) / y_scale
            n = len(y)
            gram, moment, t_square = Z.T @ Z / n, Z.T @ t / n, float(t @ t) / n
        sums = np.concatenate([x_mean, x_scale, [y_mean, y_scale, t_square], moment, gram.ravel()])
        if not np.all(np.isfinite(sums)):
            raise ValueError("the data's values are too large to square in float64")
        return cls(x_mean, x_scale, y_mean, y_scale, gram, moment, t_square, X, y)

    def to_genes(self, model: LinearModel) -> np.ndarray:
        v = model.weights * self.x_scale / self.y_scale
        c = (model.bias + model.weights @ self.x_mean - self.y_mean) / self.y_scale
        return np.append(v, c)

    def to_model(self, genes: np.ndarray) -> LinearModel:
        w = genes[:-1] * self.y_scale / self.x_scale
        return LinearModel(w, self.y_mean + self.y_scale * genes[-1] - w @ self.x_mean)

    def standardised_mse(self, population: np.ndarray) -> np.ndarray:
        """MSE of each row of POPULATION (genes), in units of the client's variance of y."""
        quadratic = np.einsum("ij,jk,ik->i", population, self.gram, population)
        return self.t_square - 2.0 * (population @ self.moment) + quadratic


def derive_seed(run_seed: int, client_name: str, round_index: int) -> int:
    """A 32-bit seed for one client's round, so the same inputs give bit-identical models."""
    digest = hashlib.sha256(f"{run_seed}/{client_name}/{round_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def train_locally(
    problem: LocalProblem,
    received: LinearModel,
    *,
    seed: int,
    generations: int = settings.GENERATIONS,
    population: int = settings.POPULATION,
    saturation: int = DEFAULT_SATURATION,
) -> LinearModel:
    """Search from RECEIVED for a better model on the client's rows; never return a worse one."""
    if generations < 1 or population < 4:
        raise ValueError("local training needs at least 1 generation and a population of 4")
    start = problem.to_genes(received)
    start_mse = float(problem.standardised_mse(start[None, :])[0])
    if not np.isfinite(start_mse):
        raise ValueError("the received model is too large to evaluate on these rows")
    initial = _initial_population(start, start_mse, population, seed)
    ga = pygad.GA(
        num_generations=generations,
        num_parents_mating=population // 2,
        fitness_func=lambda _ga, genes, _idx: -problem.standardised_mse(genes),
        fitness_batch_size=population,
        initial_population=initial,
        gene_type=float,
        parent_selection_type="sss",
        keep_elitism=ELITES,
        crossover_type=_blend_crossover,
        mutation_type=_spread_mutation,
        stop_criteria=[f"saturate_{saturation}"],
        random_seed=seed,
        suppress_warnings=True,
    )
    ga.run()
    best_genes, _, _ = ga.best_solution(pop_fitness=ga.last_generation_fitness)
    trained = problem.to_model(np.asarray(best_genes, dtype=np.float64))
    # Elitism keeps the received model's genes in play, but the trip through standardised
    # coordinates rounds; judge on the raw rows so the promise holds bit for bit.
    if mse(trained, problem.X, problem.y) <= mse(received, problem.X, problem.y):
        return trained
    return received


def _nonzero(scale: np.ndarray) -> np.ndarray:
    # A constant column carries no information of its own; leave it unscaled.
    return np.where(scale > 0, scale, 1.0)


def _initial_population(start: np.ndarray, start_mse: float, size: int, seed: int) -> np.ndarray:
    # Spread the first generation as far as the received model's error suggests it is from a
    # good fit: an untrained model is far off, a well-trained one needs only fine steps.
    rng = np.random.default_rng([seed, 1])
    spread = float(np.sqrt(max(start_mse, 1e-12)))
    population = start + spread * rng.standard_normal((size, start.size))
    population[0] = start
    return population


def _blend_crossover(parents: np.ndarray, offspring_size: tuple, ga: pygad.GA) -> np.ndarray:
    # BLX-alpha: each gene of a child is drawn on (and a little beyond) the segment between its
    # two parents' genes, which suits real-valued genes far better than swapping them.
    rng = ga.numpy_random_generator
    n_children, n_genes = offspring_size
    a = parents[rng.randint(0, len(parents), n_children)]
    b = parents[rng.randint(0, len(parents), n_children)]
    u = rng.uniform(-BLEND_ALPHA, 1.0 + BLEND_ALPHA, (n_children, n_genes))
    return a + u * (b - a)


def _spread_mutation(offspring: np.ndarray, ga: pygad.GA) -> np.ndarray:
    # Gaussian steps scaled by how spread out the population still is in each gene: large
    # while the search explores, small as it closes in, with no schedule to tune.
    rng = ga.numpy_random_generator
    step = np.maximum(MUTATION_SCALE * ga.population.std(axis=0), MIN_STEP)
    return offspring + step * rng.standard_normal(offspring.shape)
