"""The robust aggregation rules, each against a reference written here in plain numpy, and on the
inputs an attacker or bad luck could hand them: ties, all clients equal, too few clients."""

import numpy as np
import pytest

from fedchain.learning.aggregation import (
    BYZANTINE,
    FEDAVG,
    KRUM,
    MEDIAN,
    TRIMMED_MEAN,
    aggregate,
    check_parameters,
    clients_needed,
    fedavg,
)
from fedchain.learning.linear_model import LinearModel


def random_updates(n_clients, n_features=6, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (f"cli{i}", LinearModel(rng.normal(size=n_features) * 10, rng.normal()), int(n))
        for i, n in enumerate(rng.integers(1, 500, size=n_clients))
    ]


def as_rows(updates):
    return np.array([np.append(m.weights, m.bias) for _, m, _ in updates])


def as_vector(model):
    return np.append(model.weights, model.bias)


@pytest.mark.parametrize("n_clients", [1, 2, 5, 6])
def test_median_is_numpys(n_clients):
    updates = random_updates(n_clients, seed=n_clients)
    result = aggregate(MEDIAN, {BYZANTINE: 0.0}, updates)
    np.testing.assert_allclose(as_vector(result.model), np.median(as_rows(updates), axis=0),
                               rtol=1e-15)  # fmt: skip


@pytest.mark.parametrize(("n_clients", "f"), [(3, 1), (5, 1), (7, 2), (4, 0)])
def test_trimmed_mean_drops_f_at_each_end(n_clients, f):
    updates = random_updates(n_clients, seed=10 + n_clients)
    rows = as_rows(updates)
    reference = np.sort(rows, axis=0)[f : n_clients - f].mean(axis=0)
    result = aggregate(TRIMMED_MEAN, {BYZANTINE: float(f)}, updates)
    np.testing.assert_allclose(as_vector(result.model), reference, rtol=1e-13)
    sides = np.array([result.choice[name] for name, _, _ in updates])
    assert (sides == -1).sum(axis=0).tolist() == [f] * rows.shape[1]
    assert (sides == 1).sum(axis=0).tolist() == [f] * rows.shape[1]
    low = np.where(sides == -1, rows, -np.inf).max(axis=0)
    kept = np.where(sides == 0, rows, np.nan)
    high = np.where(sides == 1, rows, np.inf).min(axis=0)
    assert np.all(low <= np.nanmin(kept, axis=0)) and np.all(np.nanmax(kept, axis=0) <= high)


def krum_reference(updates, f):
    rows = as_rows(updates)
    n = len(rows)
    distances = np.linalg.norm(rows[:, None, :] - rows[None, :, :], axis=2) ** 2
    scores = [np.sort(np.delete(distances[i], i))[: n - f - 2].sum() for i in range(n)]
    kept = sorted(np.argsort(scores, kind="stable")[: n - f])
    return scores, kept


@pytest.mark.parametrize(("n_clients", "f"), [(5, 1), (7, 2), (3, 0), (9, 1)])
def test_multi_krum_keeps_the_best_scored_and_averages_them(n_clients, f):
    updates = random_updates(n_clients, seed=20 + n_clients)
    scores, kept = krum_reference(updates, f)
    result = aggregate(KRUM, {BYZANTINE: float(f)}, updates)
    chosen = [i for i, (name, _, _) in enumerate(updates) if result.choice[name][1] == 1.0]
    assert chosen == kept
    np.testing.assert_allclose([result.choice[name][0] for name, _, _ in updates], scores,
                               rtol=1e-12)  # fmt: skip
    assert result.model == fedavg([(updates[i][1], updates[i][2]) for i in kept])


def test_krum_leaves_out_the_outlier():
    updates = random_updates(5, seed=3)
    name, model, n = updates[2]
    updates[2] = (name, LinearModel(model.weights * -10, model.bias * -10), n)
    result = aggregate(KRUM, {BYZANTINE: 1.0}, updates)
    assert result.choice[name][1] == 0.0
    assert sum(kept for _, kept in result.choice.values()) == 4


def test_fedavg_through_aggregate_is_fedavg():
    updates = random_updates(4)
    result = aggregate(FEDAVG, {}, updates)
    assert result.model == fedavg([(m, n) for _, m, n in updates]) and result.choice == {}


@pytest.mark.parametrize("rule", [MEDIAN, TRIMMED_MEAN, KRUM])
def test_all_clients_equal_gives_their_model(rule):
    model = LinearModel([1.5, -2.0, 3.25], 0.5)
    updates = [(f"cli{i}", model, 10 + i) for i in range(5)]
    assert aggregate(rule, {BYZANTINE: 1.0}, updates).model == model


@pytest.mark.parametrize("rule", [MEDIAN, TRIMMED_MEAN, KRUM])
def test_ties_are_broken_by_client_order_so_every_verifier_agrees(rule):
    a, b = LinearModel([1.0, 1.0], 1.0), LinearModel([2.0, 2.0], 2.0)
    updates = [("x", b, 5), ("y", a, 5), ("z", b, 5), ("w", a, 5), ("v", b, 5)]
    first = aggregate(rule, {BYZANTINE: 1.0}, updates)
    again = aggregate(rule, {BYZANTINE: 1.0}, list(updates))
    assert first == again
    if rule == TRIMMED_MEAN:  # of the tied low values, the first (y) is dropped
        assert first.choice["y"] == (-1.0, -1.0, -1.0) and first.choice["w"] == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("rule", "f", "needed"), [(KRUM, 1, 5), (KRUM, 0, 3), (TRIMMED_MEAN, 2, 5), (MEDIAN, 1, 3)]
)
def test_too_few_clients_is_a_clear_refusal(rule, f, needed):
    assert clients_needed(rule, {BYZANTINE: float(f)}) == needed
    with pytest.raises(ValueError, match=f"needs at least {needed} clients"):
        aggregate(rule, {BYZANTINE: float(f)}, random_updates(needed - 1))
    aggregate(rule, {BYZANTINE: float(f)}, random_updates(needed))


@pytest.mark.parametrize(
    ("rule", "parameters"),
    [
        ("mean", {}),
        (FEDAVG, {BYZANTINE: 1.0}),
        (KRUM, {}),
        (KRUM, {BYZANTINE: 1.5}),
        (KRUM, {BYZANTINE: -1.0}),
        (MEDIAN, {BYZANTINE: 1.0, "step": 1.0}),
        (TRIMMED_MEAN, {BYZANTINE: 1}),  # an int: parameters are float64 on the chain
    ],
)
def test_bad_parameters_are_refused(rule, parameters):
    with pytest.raises(ValueError):
        check_parameters(rule, parameters)


def test_krum_refuses_models_too_far_apart_to_score():
    updates = [(f"c{i}", LinearModel([(-1) ** i * 1e200], 0.0), 1) for i in range(5)]
    with pytest.raises(ValueError, match="overflow"):
        aggregate(KRUM, {BYZANTINE: 1.0}, updates)
