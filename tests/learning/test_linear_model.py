"""The linear model, its measures and FedAvg, checked against hand-worked values and lstsq."""

import numpy as np
import pytest

from fedchain.learning.aggregation import fedavg
from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse, r2


def test_lstsq_recovers_the_generating_weights():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4)) * [1, 10, 100, 0.1]
    w = np.array([0.5, -2.0, 0.01, 30.0])
    model = fit_lstsq(X, X @ w + 7.0)
    np.testing.assert_allclose(model.weights, w, rtol=1e-9)
    assert model.bias == pytest.approx(7.0, rel=1e-9)


def test_mse_and_r2_by_hand():
    X = np.array([[0.0], [1.0], [2.0]])
    y = np.array([1.0, 2.0, 4.0])
    model = LinearModel([1.0], 1.0)  # predicts 1, 2, 3: one miss of 1
    assert mse(model, X, y) == pytest.approx(1 / 3)
    assert r2(model, X, y) == pytest.approx(1 - (1 / 3) / np.var(y))


def test_fedavg_weights_by_sample_count():
    small = LinearModel([1.0, 2.0], 0.0)
    large = LinearModel([4.0, 8.0], 3.0)
    average = fedavg([(small, 1), (large, 2)])
    assert list(average.weights) == [3.0, 6.0]
    assert average.bias == 2.0


def test_fedavg_sums_in_the_order_given_so_verifiers_get_the_same_bits():
    rng = np.random.default_rng(2)
    updates = [(LinearModel(rng.normal(size=5), rng.normal()), int(n)) for n in (535, 1, 97)]
    # The same arithmetic written out: ((n1*w1 + n2*w2) + n3*w3) / (n1 + n2 + n3).
    weights = np.zeros(5)
    bias = 0.0
    for model, n in updates:
        weights = weights + float(n) * model.weights
        bias = bias + float(n) * model.bias
    assert fedavg(updates) == LinearModel(weights / 633.0, bias / 633.0)


@pytest.mark.parametrize(
    ("updates", "error"),
    [
        ([], ValueError),
        ([(LinearModel([1.0], 0.0), 0)], ValueError),
        ([(LinearModel([1.0], 0.0), -3)], ValueError),
        ([(LinearModel([1.0], 0.0), True)], TypeError),
        ([(LinearModel([1.0], 0.0), 2.0)], TypeError),
        ([(LinearModel([1.0], 0.0), 1), (LinearModel([1.0, 2.0], 0.0), 1)], ValueError),
        ([(LinearModel([1e308], 0.0), 2), (LinearModel([1e308], 0.0), 1)], ValueError),
    ],
)
def test_fedavg_refuses_bad_input(updates, error):
    with pytest.raises(error):
        fedavg(updates)


@pytest.mark.parametrize(
    ("weights", "bias", "error"),
    [
        ([1.0, float("nan")], 0.0, ValueError),
        ([1.0], float("inf"), ValueError),
        ([[1.0, 2.0]], 0.0, ValueError),
        ([], 0.0, ValueError),
        (["1.0"], 0.0, TypeError),
        ([1.0], "0", TypeError),
        ([1.0], True, TypeError),
    ],
)
def test_model_refuses_what_it_cannot_hold(weights, bias, error):
    with pytest.raises(error):
        LinearModel(weights, bias)


def test_models_compare_bit_for_bit_and_cannot_be_changed():
    model = LinearModel([0.0], 0.0)
    assert model == LinearModel(np.zeros(1), 0)
    assert model != LinearModel([-0.0], 0.0)
    assert model != LinearModel([np.nextafter(0.0, 1.0)], 0.0)
    with pytest.raises(ValueError):
        model.weights[0] = 1.0
