"""The PyGAD local search: it reaches the least-squares fit, never returns a worse model than it
was given, leaves alone what the client's rows cannot see, and the same inputs give the same
bits."""

import numpy as np
import pytest
from learning_helpers import some_model, synthetic

from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse
from fedchain.learning.local_training import (
    LocalProblem,
    _Whitening,
    derive_seed,
    proximal_weight,
    train_and_score,
    train_locally,
)

EXACT = 1e-6  # a tolerance that asks the search for the fit to ~1e-8 of the MSE


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_from_zero_reaches_the_lstsq_fit(seed):
    X, y = synthetic(seed)
    trained = train_locally(
        LocalProblem.from_data(X, y), LinearModel.zeros(X.shape[1]), seed=seed, tolerance=EXACT
    )
    assert mse(trained, X, y) <= (1 + 1e-6) * mse(fit_lstsq(X, y), X, y)


def test_default_search_stops_near_the_noise_floor_of_the_fit():
    X, y = synthetic(8)
    best = mse(fit_lstsq(X, y), X, y)
    trained = train_locally(LocalProblem.from_data(X, y), LinearModel.zeros(6), seed=0)
    # The default stops within a small fraction of the excess that 300 rows of noise put into
    # even the exact fit of 7 parameters (7/300 of the MSE).
    assert mse(trained, X, y) <= best * (1 + 0.05 * 7 / 300)


def test_never_returns_a_model_worse_than_it_received():
    X, y = synthetic(3)
    problem = LocalProblem.from_data(X, y)
    best = fit_lstsq(X, y)
    for seed in range(5):
        result = train_and_score(problem, best, seed=seed, generations=5, population=8)
        assert mse(result.model, X, y) <= mse(best, X, y)
        assert result.received_mse == mse(best, X, y)
        assert result.trained_mse == mse(result.model, X, y)


def test_same_inputs_give_identical_bits_and_the_seed_matters():
    X, y = synthetic(4)
    problem = LocalProblem.from_data(X, y)
    start = LinearModel.zeros(X.shape[1])
    first = train_locally(problem, start, seed=7, generations=30)
    assert train_locally(problem, start, seed=7, generations=30) == first
    assert train_locally(problem, start, seed=8, generations=30) != first


def test_a_constant_column_keeps_the_weight_it_was_received_with_bit_for_bit():
    X, y = synthetic(5)
    X[:, 2] = 4.0
    problem = LocalProblem.from_data(X, y)
    for seed, weight in enumerate([0.37, -0.0, 1e6]):
        received = some_model(seed, 6)
        received = LinearModel(np.where(np.arange(6) == 2, weight, received.weights), 1.5)
        trained = train_locally(problem, received, seed=seed)
        assert trained.weights[2].tobytes() == received.weights[2].tobytes()
        # The search did move the rest: to the best fit with that weight held.
        assert mse(trained, X, y) <= (1 + 1e-3) * mse(fit_lstsq(X, y), X, y)


def test_equal_columns_do_not_learn_a_difference_the_rows_cannot_show():
    X, y = synthetic(6)
    X[:, 4] = X[:, 1]
    problem = LocalProblem.from_data(X, y)
    for seed in range(5):
        received = some_model(seed, 6)
        trained = train_locally(problem, received, seed=seed)
        # Both weights take the same step; only rounding the two sums can tell them apart.
        change = (trained.weights[1] - trained.weights[4]) - (
            received.weights[1] - received.weights[4]
        )
        ulp = np.spacing(np.abs(trained.weights[[1, 4]]).max())
        assert abs(change) <= 2 * ulp
        assert mse(trained, X, y) <= (1 + 1e-3) * mse(fit_lstsq(X, y), X, y)
    # From equal weights they stay equal, to the bit.
    trained = train_locally(problem, LinearModel.zeros(6), seed=0)
    assert trained.weights[1] == trained.weights[4]


def test_a_direction_the_rows_cannot_see_is_left_alone():
    X, y = synthetic(9)
    X[:, 5] = 2.0 * X[:, 0] - X[:, 3]  # so w and w + s·(2, 0, 0, -1, 0, -1) predict alike
    problem = LocalProblem.from_data(X, y)
    received = some_model(1, 6)
    trained = train_locally(problem, received, seed=0)
    # "Along" as the client measures it, in standardised units (ZᵀZ is its Gram matrix): the
    # step has no component along the hidden direction, to rounding.
    scale = problem.x_scale[problem.group]
    hidden = np.array([2.0, 0, 0, -1, 0, -1]) * scale
    step = (trained.weights - received.weights) * scale
    assert abs(step @ hidden) <= 1e-12 * np.linalg.norm(step) * np.linalg.norm(hidden)
    assert mse(trained, X, y) <= (1 + 1e-3) * mse(fit_lstsq(X, y), X, y)


def test_the_fitness_from_sums_is_the_row_mse_in_whitened_coordinates():
    X, y = synthetic(6)
    X[:, 4] = X[:, 1]
    X[:, 2] = -3.0
    problem = LocalProblem.from_data(X, y)
    received = some_model(2, 6)
    for proximal in (0.0, 1.0):
        whitening = _Whitening(problem, received, 1 / np.sqrt(problem.curvature + proximal))
        bowl = whitening.bowl()
        genes = bowl.start + np.random.default_rng(0).normal(size=bowl.start.size)
        model = whitening.to_model(genes)
        scale = problem.x_scale[problem.group] / problem.y_scale
        step = (model.weights - received.weights)[problem.seen] * scale  # standardised units
        penalty = proximal * float(step @ step)
        expected = mse(model, X, y) / problem.y_scale**2 + penalty
        assert bowl(genes[None, :])[0] == pytest.approx(expected, rel=1e-9)
        assert whitening.to_model(bowl.start).weights == pytest.approx(received.weights, rel=1e-12)


def test_derived_seeds_are_pinned_and_distinct():
    # Pinned from the definition (the first 4 bytes of sha256("0/cli1/1"), and so on), so that
    # a change to how seeds are derived, which would change every chain, cannot pass unnoticed.
    assert derive_seed(0, "cli1", 1) == 28028089
    assert derive_seed(0, "cli2", 1) == 2265499832
    assert derive_seed(7, "cli1", 3) == 2375271547
    seeds = {derive_seed(s, c, r) for s in (0, 1) for c in ("cli1", "cli2") for r in (1, 2)}
    assert len(seeds) == 8
    assert all(0 <= s < 2**32 for s in seeds)


def test_the_proximal_term_starts_in_round_two():
    assert proximal_weight(1) == 0.0
    assert proximal_weight(2) > 0 and proximal_weight(9) == proximal_weight(2)


def test_refuses_a_population_too_small_a_negative_proximal_weight_and_a_wrong_model():
    X, y = synthetic(7)
    problem = LocalProblem.from_data(X, y)
    with pytest.raises(ValueError):
        train_locally(problem, LinearModel.zeros(6), seed=0, population=2)
    with pytest.raises(ValueError):
        train_locally(problem, LinearModel.zeros(6), seed=0, proximal=-1.0)
    with pytest.raises(ValueError, match="6 columns"):
        train_locally(problem, LinearModel.zeros(5), seed=0)


def test_the_rows_memory_layout_does_not_change_a_bit():
    # pandas hands a loaded file over column by column; the simulation slices rows. numpy sums a
    # column-major column in an order that depends on its address, so the networked client once
    # drifted from the simulation in the last bits on 19 of 32 shards.
    X, y = synthetic(10, n_rows=33, n_features=12)
    X[:, 5] = 0.0
    by_rows = LocalProblem.from_data(X, y)
    buffer = np.empty(X.size + 1)
    shifted = buffer[1:].reshape(X.shape, order="F")  # column-major, and 8 bytes off
    shifted[...] = X
    by_columns = LocalProblem.from_data(shifted, y)
    for field in ("x_mean", "x_scale", "basis", "curvature", "moment"):
        assert np.array_equal(getattr(by_rows, field), getattr(by_columns, field))
    start = LinearModel.zeros(12)
    assert train_locally(by_rows, start, seed=3) == train_locally(by_columns, start, seed=3)


def test_rows_that_see_no_column_fit_only_the_intercept():
    X = np.tile([1.0, -2.0, 0.5], (40, 1))
    y = np.random.default_rng(0).normal(3.0, 1.0, 40)
    received = LinearModel(np.array([0.3, -0.0, 7.0]), 0.0)
    trained = train_locally(LocalProblem.from_data(X, y), received, seed=0)
    assert trained.weights.tobytes() == received.weights.tobytes()
    assert mse(trained, X, y) == pytest.approx(np.var(y), rel=1e-6)
