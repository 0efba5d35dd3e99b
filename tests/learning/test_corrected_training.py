"""The drift-corrected local search: its gradient is the MSE's, and from the received model x it
lowers f_i(w) + <G - g_i(x), w - x> + proximal x |w - x|² (standardised) to near the objective's
exact minimiser, which only the test works out in closed form; a column constant on the client
moves when the correction pushes it, a column of zeros keeps its bits; the same inputs give the
same bits, and bad inputs are refused with a ValueError before any search."""

import numpy as np
import pytest
from learning_helpers import some_model, synthetic

from fedchain.learning.corrected_training import CorrectedProblem, gradient, train_corrected
from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse
from fedchain.learning.local_training import LocalProblem

EXACT = 1e-6  # a tolerance that asks the search for the bottom to ~1e-8 of the client's MSE
FINE = 1e-10  # finer still: within ~1e-11 of what there is to gain, on these rows


def vector(model: LinearModel) -> np.ndarray:
    return np.append(model.weights, model.bias)


def design(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.ones((len(X), 1))])


def reference_gradient(X: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """2·Aᵀ(Aθ - y)/n with A = [X | 1]: the MSE's gradient, weights then bias."""
    A = design(X)
    return 2.0 * A.T @ (A @ theta - y) / len(y)


def standardised(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """M such that M·Δθ is a step Δθ (weights, then bias) in the client's standardised
    coordinates, as the module docstring defines them: a varying column's weight times its spread,
    a constant non-zero column's times its value, and the prediction at the client's mean; all
    over the spread of y. A column of zeros has no coordinate."""
    n_features = X.shape[1]
    varying = ~np.all(X[0] == X, axis=0)
    constant = ~varying & (X[0] != 0)
    rows = []
    for j in range(n_features):
        if varying[j] or constant[j]:
            row = np.zeros(n_features + 1)
            row[j] = X[:, j].std() if varying[j] else abs(X[0, j])
            rows.append(row)
    rows.append(np.append(np.where(varying, X.mean(axis=0), X[0]), 1.0))
    return np.array(rows) / y.std()


def objective(X, y, x, correction, proximal):
    """The corrected objective in raw units (the standardised one times the variance of y)."""
    A, M, y_variance = design(X), standardised(X, y), float(y.var())

    def value(theta: np.ndarray) -> float:
        residual, step = A @ theta - y, M @ (theta - x)
        return (
            residual @ residual / len(y)
            + correction @ (theta - x)
            + proximal * y_variance * (step @ step)
        )

    return value


def exact_minimiser(X, y, x, correction, proximal):
    """The objective's minimiser by one linear solve (the test may; the library must not), the
    weights of all-zero columns held where they are: no term of the objective but the
    correction's moves them."""
    A, M, y_variance = design(X), standardised(X, y), float(y.var())
    free = np.append(np.any(X != 0, axis=0), True)
    curvature = 2.0 * A.T @ A / len(y) + 2.0 * proximal * y_variance * M.T @ M
    right = 2.0 * A.T @ y / len(y) - correction + 2.0 * proximal * y_variance * M.T @ M @ x
    theta = x.copy()
    solved = right[free] - curvature[np.ix_(free, ~free)] @ x[~free]
    theta[free] = np.linalg.solve(curvature[np.ix_(free, free)], solved)
    return theta


def trained_vector(X, y, received, global_gradient, **options):
    result = train_corrected(
        CorrectedProblem(LocalProblem.from_data(X, y)), received, global_gradient, **options
    )
    return result, vector(result.model)


# The gradient.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_is_the_mse_gradient_of_numpy(seed):
    X, y = synthetic(seed)
    model = some_model(seed, X.shape[1])
    problem = LocalProblem.from_data(X, y)
    got = gradient(problem, model)
    expected = reference_gradient(X, y, vector(model))
    assert got.shape == (X.shape[1] + 1,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_gradient_vanishes_at_the_least_squares_fit_and_is_linear_in_the_model():
    X, y = synthetic(3)
    problem = LocalProblem.from_data(X, y)
    at_fit = gradient(problem, fit_lstsq(X, y))
    at_zero = gradient(problem, LinearModel.zeros(X.shape[1]))
    assert np.abs(at_fit).max() <= 1e-9 * np.abs(at_zero).max()
    # A quadratic's gradient: g(a) + g(b) = g(a + b) + g(0).
    a, b = some_model(1, 6), some_model(2, 6)
    total = LinearModel(a.weights + b.weights, a.bias + b.bias)
    both = gradient(problem, a) + gradient(problem, b)
    np.testing.assert_allclose(
        both, gradient(problem, total) + at_zero, rtol=1e-9, atol=1e-9 * np.abs(both).max()
    )


def test_gradient_of_a_model_too_large_for_the_rows_is_refused():
    X, y = synthetic(4)
    with pytest.raises(ValueError, match="too large"):
        gradient(LocalProblem.from_data(X, y), LinearModel(np.full(6, 1e306), 0.0))


# The search, against the objective worked out here.


@pytest.mark.parametrize("proximal", [0.3, 1.0, 3.0])
def test_without_a_correction_the_search_lowers_the_clients_mse_plus_proximal(proximal):
    X, y = synthetic(5)
    problem = LocalProblem.from_data(X, y)
    received = some_model(5, 6)
    x, own = vector(received), gradient(problem, received)  # G = g_i(x): no correction
    result, theta = trained_vector(X, y, received, own, seed=1, proximal=proximal)
    value = objective(X, y, x, np.zeros(7), proximal)
    best = value(exact_minimiser(X, y, x, np.zeros(7), proximal))
    assert value(theta) < value(x)
    # The default search stops near the bottom: within a thousandth of what there was to gain.
    assert value(theta) - best <= 1e-3 * (value(x) - best)
    # The proximal term is never negative, so the client's own MSE went down too.
    assert result.received_mse == mse(received, X, y)
    assert result.trained_mse == mse(result.model, X, y)
    assert result.trained_mse < result.received_mse


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_with_a_correction_the_search_reaches_the_corrected_objectives_minimiser(seed):
    X, y = synthetic(10 + seed)
    problem = LocalProblem.from_data(X, y)
    rng = np.random.default_rng(seed)
    received = some_model(20 + seed, 6)
    x, own = vector(received), gradient(problem, received)
    # A global gradient the size of the client's own, in another direction.
    global_gradient = rng.normal(size=7) * np.abs(own)
    correction = global_gradient - own
    proximal = [0.3, 1.0, 0.1, 3.0][seed]
    result, theta = trained_vector(
        X, y, received, global_gradient, seed=seed, proximal=proximal, tolerance=FINE
    )
    value = objective(X, y, x, correction, proximal)
    bottom = exact_minimiser(X, y, x, correction, proximal)
    assert value(theta) < value(x)
    # Tight enough that a step 0.1% off along one coordinate fails (it leaves ~1e-9).
    assert value(theta) - value(bottom) <= 1e-10 * (value(x) - value(bottom))
    M = standardised(X, y)  # the model itself, measured where the objective is round
    assert np.linalg.norm(M @ (theta - bottom)) <= 2e-5 * np.linalg.norm(M @ (bottom - x))
    # The MSEs reported are the client's, before and after.
    assert result.received_mse == mse(received, X, y)
    assert result.trained_mse == mse(result.model, X, y)


def test_the_default_tolerance_also_gets_near_the_corrected_bottom():
    X, y = synthetic(7)
    problem = LocalProblem.from_data(X, y)
    received = some_model(7, 6)
    x, own = vector(received), gradient(problem, received)
    global_gradient = own + np.random.default_rng(7).normal(size=7) * np.abs(own)
    _, theta = trained_vector(X, y, received, global_gradient, seed=0, proximal=0.3)
    value = objective(X, y, x, global_gradient - own, 0.3)
    best = value(exact_minimiser(X, y, x, global_gradient - own, 0.3))
    assert value(theta) - best <= 1e-3 * (value(x) - best)


def test_at_the_pooled_optimum_the_correction_holds_the_client_where_it_is():
    # G = 0 (the pooled fit): the correction cancels the client's own pull, so the bottom is x.
    X, y = synthetic(8)
    problem = LocalProblem.from_data(X, y)
    received = some_model(8, 6)
    x = vector(received)
    result, theta = trained_vector(X, y, received, np.zeros(7), seed=3, proximal=0.3)
    value = objective(X, y, x, -gradient(problem, received), 0.3)
    np.testing.assert_allclose(exact_minimiser(X, y, x, -gradient(problem, received), 0.3), x)
    assert value(theta) <= value(x)
    # Only the search's last rounding away from x, in the client's standardised units.
    assert np.linalg.norm(standardised(X, y) @ (theta - x)) <= 1e-6
    assert result.trained_mse == pytest.approx(result.received_mse, rel=1e-9)


# Columns the client's rows cannot see.


@pytest.mark.parametrize(
    "zero_weight",
    [
        0.37,
        1e6,
        0.0,
        -0.0,  # -0.0 + 0.0 is 0.0: a weight no step touches must not be added to
    ],
)
def test_a_constant_column_moves_when_pushed_and_a_zero_column_keeps_its_bits(zero_weight):
    X, y = synthetic(9)
    X[:, 2] = 4.0  # constant, non-zero, on this client
    X[:, 4] = 0.0  # zero on every row
    problem = LocalProblem.from_data(X, y)
    fit = fit_lstsq(X, y)  # the client's own fit, so only the correction moves it
    received = LinearModel(np.where(np.arange(6) == 4, zero_weight, fit.weights), fit.bias)
    x, own = vector(received), gradient(problem, received)
    push = np.zeros(7)
    # The pooled rows pull on the constant column, enough for a step of 0.1 standardised units
    # (a step far below the client's noise the search need not resolve), and on the zero
    # column, which these rows give no scale for.
    push[2] = 0.1 * 2.0 * 0.3 * 4.0 * y.std()
    push[4] = -3.0
    result, theta = trained_vector(
        X, y, received, own + push, seed=4, proximal=0.3, tolerance=EXACT
    )
    # The zero column: not a bit moved.
    assert np.float64(result.model.weights[4]).tobytes() == np.float64(zero_weight).tobytes()
    # The constant column: moved against the push, to where the objective's bottom is.
    bottom = exact_minimiser(X, y, x, push, 0.3)
    assert theta[2] < x[2]
    assert theta[2] - x[2] == pytest.approx(bottom[2] - x[2], rel=1e-3)
    value = objective(X, y, x, push, 0.3)
    assert value(theta) - value(bottom) <= 1e-5 * (value(x) - value(bottom))
    # The bias made up for it on these rows: the client's fit is still its fit.
    assert result.trained_mse == pytest.approx(result.received_mse, rel=1e-6)


def test_without_a_push_the_constant_column_stays_near_its_weight():
    X, y = synthetic(9)
    X[:, 2] = 4.0
    problem = LocalProblem.from_data(X, y)
    received = fit_lstsq(X, y)
    _, theta = trained_vector(
        X, y, received, gradient(problem, received), seed=4, proximal=0.3, tolerance=EXACT
    )
    scale = 4.0 / y.std()  # the constant column's standardised unit
    assert abs(theta[2] - received.weights[2]) * scale <= 1e-6


# Determinism.


def test_same_inputs_give_identical_bits_and_the_seed_matters():
    X, y = synthetic(11)
    problem = LocalProblem.from_data(X, y)
    received = some_model(11, 6)
    global_gradient = gradient(problem, received) * np.linspace(-1.0, 2.0, 7)
    corrected = CorrectedProblem(problem)
    first = train_corrected(corrected, received, global_gradient, seed=7, proximal=0.3)
    again = train_corrected(corrected, received, global_gradient, seed=7, proximal=0.3)
    fresh = train_corrected(
        CorrectedProblem(LocalProblem.from_data(X.copy(), y.copy())),
        received,
        global_gradient.copy(),
        seed=7,
        proximal=0.3,
    )
    assert again.model == first.model
    assert fresh.model == first.model
    assert (again.received_mse, again.trained_mse) == (first.received_mse, first.trained_mse)
    other = train_corrected(corrected, received, global_gradient, seed=8, proximal=0.3)
    assert other.model != first.model


# Bad inputs: refused by the library's own checks, before PyGAD runs.


@pytest.fixture(scope="module")
def client():
    X, y = synthetic(12)
    problem = LocalProblem.from_data(X, y)
    received = some_model(12, 6)
    return CorrectedProblem(problem), received, gradient(problem, received)


@pytest.mark.parametrize("shape", [(0,), (6,), (8,), (1, 7)])
def test_a_global_gradient_of_the_wrong_shape_is_refused(client, shape):
    corrected, received, _ = client
    expected = rf"the global gradient must be a vector of 7 numbers, not shape \({shape[0]},"
    with pytest.raises(ValueError, match=expected):
        train_corrected(corrected, received, np.zeros(shape), seed=0, proximal=0.3)


@pytest.mark.parametrize("proximal", [0.0, -0.0, -1.0, float("nan"), float("inf")])
def test_a_proximal_weight_that_is_not_positive_and_finite_is_refused(client, proximal):
    corrected, received, own = client
    with pytest.raises(ValueError, match="the proximal weight must be positive"):
        train_corrected(corrected, received, own, seed=0, proximal=proximal)


@pytest.mark.parametrize("n_features", [5, 7])
def test_a_model_with_another_number_of_weights_is_refused(client, n_features):
    corrected, _, _ = client
    with pytest.raises(ValueError, match=f"the model has {n_features} weights for 6 columns"):
        train_corrected(corrected, LinearModel.zeros(n_features), np.zeros(7), seed=0, proximal=0.3)


@pytest.mark.parametrize(
    "weights, bias",
    [(np.full(6, 1e200), 0.0), (np.ones(6), 1e200), (np.array([0, 0, 0, 1e200, 0, 0]), 0.0)],
)
def test_a_huge_received_model_is_refused(client, weights, bias):
    corrected, _, own = client
    with pytest.raises(ValueError, match="too large"):
        train_corrected(corrected, LinearModel(weights, bias), own, seed=0, proximal=0.3)


@pytest.mark.parametrize(
    ("bad", "error"),
    [(float("nan"), "NaN or infinity"), (float("inf"), "NaN or infinity"), (1e300, "too large")],
)
def test_a_global_gradient_that_is_not_finite_or_too_large_is_refused(client, bad, error):
    corrected, received, own = client
    global_gradient = own.copy()
    global_gradient[3] = bad
    with pytest.raises(ValueError, match=error):
        train_corrected(corrected, received, global_gradient, seed=0, proximal=0.3)


def test_a_search_too_small_is_refused(client):
    corrected, received, own = client
    with pytest.raises(ValueError, match="at least 1 generation"):
        train_corrected(corrected, received, own, seed=0, proximal=0.3, generations=0)
    with pytest.raises(ValueError, match="a population of 4"):
        train_corrected(corrected, received, own, seed=0, proximal=0.3, population=3)


# Found by this file's first draft: near an exact fit the bowl's MSE part cancelled to <= 0,
# the search took it as its scale, never moved, and ignored the correction.


@pytest.mark.parametrize("noise", [0.0, 1e-9])
def test_a_client_the_received_model_fits_exactly_still_follows_the_correction(noise):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 3))
    weights, bias = np.array([1.0, -2.0, 0.5]), 0.25
    y = X @ weights + bias + noise * rng.normal(size=50)
    received = LinearModel(weights, bias)
    problem = LocalProblem.from_data(X, y)
    x, own = vector(received), gradient(problem, received)
    global_gradient = np.array([0.3, -0.1, 0.2, 0.05])
    _, theta = trained_vector(X, y, received, global_gradient, seed=1, proximal=0.3)
    value = objective(X, y, x, global_gradient - own, 0.3)
    best = value(exact_minimiser(X, y, x, global_gradient - own, 0.3))
    # There is a lot to gain (about -0.024 against ~0 at x); the search gains none of it.
    assert value(theta) - best <= 1e-3 * (value(x) - best)
