"""The evolutionary search every local training runs: PyGAD minimising a whitened bowl.

A bowl is a quadratic whose curvature is the identity, so the search needs no knowledge of the
data's scales; local_training.py and corrected_training.py each whiten a client's problem into one.
"""

import statistics
from dataclasses import dataclass

import numpy as np
import pygad

BLOCK_GENES = 64  # the most genes one PyGAD run searches; PyGAD's bookkeeping costs per gene
PROBE_STEP = 1e-4  # the first generation's spread, as a fraction of the start's distance bound


def search_bowl(
    bowl: "Bowl",
    *,
    seed: int,
    generations: int,
    population: int,
    tolerance_per_gene: float,
    scale: float | None = None,
) -> np.ndarray:
    """The best genes PyGAD finds on BOWL from its start, never worse than the start.

    A block of genes stops once its estimated squared distance to the bottom is below
    TOLERANCE_PER_GENE x its genes x SCALE; SCALE is the bowl's own value by default (a bowl
    that is a mean squared error), or a fixed one for a bowl that can go below zero.
    """
    genes = bowl.start.copy()
    # A whitened bowl is a sum of independent one-gene bowls, so blocks of genes can be searched
    # one after another (cooperative coevolution, Potter and De Jong 1994) at no loss, and short
    # solutions make PyGAD's per-gene bookkeeping far cheaper.
    n_blocks = -(-genes.size // BLOCK_GENES)
    for index, block in enumerate(np.array_split(np.arange(genes.size), n_blocks)):
        search = _Search(
            bowl.part(genes, block), population, tolerance_per_gene * block.size, scale
        )
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
    return genes


@dataclass(frozen=True)
class Bowl:
    """F(z) = offset + 2·gradient·z + |z|²: the fitness, to be minimised, in whitened genes."""

    offset: float
    gradient: np.ndarray
    start: np.ndarray

    def __call__(self, population: np.ndarray) -> np.ndarray:
        return self.offset + 2.0 * (population @ self.gradient) + (population * population).sum(1)

    def part(self, genes: np.ndarray, block: np.ndarray) -> "Bowl":
        """The bowl of the genes in BLOCK, the others held at GENES."""
        x, g = genes[block], self.gradient[block]
        held = self.offset + 2.0 * (genes @ self.gradient) + genes @ genes - 2.0 * (x @ g) - x @ x
        return Bowl(float(held), g, x)


class _Search:
    """A (μ/μ_W, λ) evolution strategy (Beyer 2001) run by PyGAD on one bowl: its state between
    PyGAD's calls.

    Each generation PyGAD keeps the better half as parents (steady-state selection), the crossover
    blends them, weighted by rank, into one recombinant, and the mutation sends every child but
    the first from there by one Gaussian step. The step follows how far the recombinant still is
    from the bottom, which the children's fitness tells exactly in these coordinates.
    """

    def __init__(self, bowl: Bowl, population: int, tolerance: float, scale: float | None) -> None:
        self.bowl = bowl
        self.tolerance = tolerance
        self.scale = scale
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
        # A bowl that can go below zero gives its scale; its start is |start + gradient| from
        # the bottom, so a start that fits the rows exactly still probes along the gradient.
        to_bottom = bowl.start + bowl.gradient
        bound = start_fitness if scale is None else max(scale, float(to_bottom @ to_bottom))
        self.step = PROBE_STEP * np.sqrt(max(bound, 0.0) / self.n_genes)
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
        scale = -fitness[0] if self.scale is None else self.scale
        return "stop" if self.distance2 <= self.tolerance * scale else None

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
