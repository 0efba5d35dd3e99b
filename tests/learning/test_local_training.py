"""The PyGAD local search: it reaches the least-squares fit, never returns a worse model than it
was given, and the same inputs give the same bits."""

import numpy as np
import pytest

from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse
from fedchain.learning.local_training import LocalProblem, derive_seed, train_locally


def synthetic(seed: int, n_rows: int = 300, n_features: int = 6):
    rng = np.random.default_rng(seed)
    # Columns on very different scales and offsets, as raw data has them.
    X = rng.normal(size=(n_rows, n_features)) * rng.uniform(0.01, 100, n_features)
    X += rng.uniform(-50, 50, n_features)
    y = X @ rng.normal(size=n_features) + 3.0 + 0.5 * rng.normal(size=n_rows)
    return X, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_from_zero_reaches_the_lstsq_fit(seed):
    X, y = synthetic(seed)
    trained = train_locally(LocalProblem.from_data(X, y), LinearModel.zeros(X.shape[1]), seed=seed)
    assert mse(trained, X, y) <= (1 + 1e-6) * mse(fit_lstsq(X, y), X, y)


def test_never_returns_a_model_worse_than_it_received():
    X, y = synthetic(3)
    problem = LocalProblem.from_data(X, y)
    best = fit_lstsq(X, y)
    for seed in range(5):
        trained = train_locally(problem, best, seed=seed, generations=5, population=8)
        assert mse(trained, X, y) <= mse(best, X, y)


def test_same_inputs_give_identical_bits_and_the_seed_matters():
    X, y = synthetic(4)
    problem = LocalProblem.from_data(X, y)
    start = LinearModel.zeros(X.shape[1])
    first = train_locally(problem, start, seed=7, generations=30)
    assert train_locally(problem, start, seed=7, generations=30) == first
    assert train_locally(problem, start, seed=8, generations=30) != first


def test_constant_column_does_not_break_the_scaling():
    X, y = synthetic(5)
    X[:, 2] = 4.0
    trained = train_locally(LocalProblem.from_data(X, y), LinearModel.zeros(X.shape[1]), seed=0)
    assert np.all(np.isfinite(trained.weights))
    assert mse(trained, X, y) <= (1 + 1e-6) * mse(fit_lstsq(X, y), X, y)


def test_standardised_coordinates_round_trip():
    X, y = synthetic(6)
    problem = LocalProblem.from_data(X, y)
    model = fit_lstsq(X, y)
    back = problem.to_model(problem.to_genes(model))
    np.testing.assert_allclose(back.weights, model.weights, rtol=1e-12)
    assert back.bias == pytest.approx(model.bias, rel=1e-12)
    # The batch fitness from sums is the row-by-row MSE, rescaled.
    genes = problem.to_genes(model)[None, :]
    assert problem.standardised_mse(genes)[0] * problem.y_scale**2 == pytest.approx(
        mse(model, X, y), rel=1e-9
    )


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "cli1", 1) == derive_seed(0, "cli1", 1)
    seeds = {derive_seed(s, c, r) for s in (0, 1) for c in ("cli1", "cli2") for r in (1, 2)}
    assert len(seeds) == 8
    assert all(0 <= s < 2**32 for s in seeds)


def test_refuses_a_population_too_small_to_evolve():
    X, y = synthetic(7)
    with pytest.raises(ValueError):
        train_locally(
            LocalProblem.from_data(X, y), LinearModel.zeros(X.shape[1]), seed=0, population=2
        )
