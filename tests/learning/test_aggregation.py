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
    feature_scale,
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
    np.testing.assert_allclose(
        as_vector(result.model), np.median(as_rows(updates), axis=0), rtol=1e-15
    )


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


def krum_reference(updates, f, scale=None):
    rows = as_rows(updates)
    if scale is not None:
        rows[:, :-1] *= scale
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
    np.testing.assert_allclose(
        [result.choice[name][0] for name, _, _ in updates], scores, rtol=1e-12
    )
    # Equal weights, as Blanchard et al. define it: a row count is only the client's word.
    assert result.model == fedavg([(updates[i][1], 1) for i in kept])
    # As format-3 chains recorded it, the kept models FedAvg'ed by their row counts.
    by_rows = aggregate(KRUM, {BYZANTINE: float(f)}, updates, kept_by_rows=True)
    assert by_rows.model == fedavg([(updates[i][1], updates[i][2]) for i in kept])
    assert by_rows.choice == result.choice


@pytest.mark.parametrize(("n_clients", "f"), [(5, 1), (7, 2)])
def test_scaled_krum_measures_each_weight_times_its_scale(n_clients, f):
    updates = random_updates(n_clients, seed=30 + n_clients)
    scale = tuple(float(s) for s in np.random.default_rng(n_clients).uniform(0.01, 50, size=6))
    scores, kept = krum_reference(updates, f, np.array(scale))
    result = aggregate(KRUM, {BYZANTINE: float(f)}, updates, scale=scale)
    np.testing.assert_allclose(
        [result.choice[name][0] for name, _, _ in updates], scores, rtol=1e-12
    )
    assert [i for i, (name, _, _) in enumerate(updates) if result.choice[name][1]] == kept
    # A scale of ones is raw units, bit for bit.
    ones = aggregate(KRUM, {BYZANTINE: float(f)}, updates, scale=(1.0,) * 6)
    assert ones == aggregate(KRUM, {BYZANTINE: float(f)}, updates)


def test_scaled_krum_sees_noise_on_a_feature_of_large_values():
    # Feature 0 takes values near 40 (age), feature 1 near 0.1: the honest clients disagree on
    # the weight of feature 1, which barely moves a prediction, while the attacker moves the
    # weight of feature 0 by 0.05, which moves every prediction by about 2.
    honest = [LinearModel([0.03, w1], 7.0) for w1 in (-0.2, -0.1, 0.0, 0.1)]
    attacker = LinearModel([0.08, 0.0], 7.0)
    updates = [(f"cli{i}", m, 100) for i, m in enumerate([*honest, attacker], start=1)]
    raw = aggregate(KRUM, {BYZANTINE: 1.0}, updates)
    assert raw.choice["cli5"][1] == 1.0  # in raw units it looks closer than cli1
    rows = np.array([[40.0, 0.1], [38.0, 0.12], [42.0, 0.08]])
    result = aggregate(KRUM, {BYZANTINE: 1.0}, updates, scale=feature_scale(rows))
    assert result.choice["cli5"][1] == 0.0
    assert result.model == fedavg([(m, 1) for m in honest])


@pytest.mark.parametrize("rule", [MEDIAN, TRIMMED_MEAN, KRUM])
def test_a_robust_rule_does_not_weigh_a_claimed_row_count(rule):
    updates = random_updates(5, seed=4)
    inflated = [*updates[:4], (updates[4][0], updates[4][1], 20 * updates[4][2])]
    assert aggregate(rule, {BYZANTINE: 1.0}, inflated) == aggregate(rule, {BYZANTINE: 1.0}, updates)
    # FedAvg trusts each client's count (McMahan et al. weigh by it): the 20x claim moves it.
    assert aggregate(FEDAVG, {}, inflated).model != aggregate(FEDAVG, {}, updates).model


def test_feature_scale_is_each_columns_root_mean_square():
    rows = np.array([[3.0, 0.0, -1.0], [4.0, 0.0, 1.0]])
    assert feature_scale(rows) == (np.sqrt(12.5), 1.0, 1.0)  # a column of zeros: raw units


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


# Two models, a and b, each held by several clients: every coordinate ties between the clients
# holding the same model, and Krum's scores tie between them too. Which tied client is dropped
# or kept follows the clients' order: the expected choice for the order y, w (a) and x, z, v (b).
LOW, KEPT, HIGH = (-1.0,) * 3, (0.0,) * 3, (1.0,) * 3
TIED_CHOICES = {
    # All four of the tied a and b values are dropped around x, the first b: a stable ranking.
    MEDIAN: {"x": KEPT, "y": LOW, "z": HIGH, "w": LOW, "v": HIGH},
    # One dropped each side: of the a values the first (y), of the b values the last (v).
    TRIMMED_MEAN: {"x": KEPT, "y": LOW, "z": KEPT, "w": KEPT, "v": HIGH},
    # The b models score 0 (two others at distance 0), the a models 3 (one at 0, one at 3):
    # four are kept, the three b and the earlier a.
    KRUM: {"x": (0.0, 1.0), "y": (3.0, 1.0), "z": (0.0, 1.0), "w": (3.0, 0.0), "v": (0.0, 1.0)},
}


@pytest.mark.parametrize("rule", [MEDIAN, TRIMMED_MEAN, KRUM])
def test_ties_are_broken_by_client_order_so_every_verifier_agrees(rule):
    a, b = LinearModel([1.0, 1.0], 1.0), LinearModel([2.0, 2.0], 2.0)
    held = {"x": b, "y": a, "z": b, "w": a, "v": b}
    updates = [(name, model, 5) for name, model in held.items()]
    assert aggregate(rule, {BYZANTINE: 1.0}, updates).choice == TIED_CHOICES[rule]
    # In the reverse order, the tied clients swap roles: the choice follows the order, not
    # the names.
    swapped = {"x": "v", "v": "x", "y": "w", "w": "y", "z": "z"}
    reverse = aggregate(rule, {BYZANTINE: 1.0}, updates[::-1]).choice
    assert reverse == {swapped[name]: side for name, side in TIED_CHOICES[rule].items()}


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
    # Within the protocol's magnitudes, a large scale overflows the same way.
    updates = [(f"c{i}", LinearModel([(-1) ** i * 1e100, 1e100], 0.0), 1) for i in range(5)]
    with pytest.raises(ValueError, match="overflow"):
        aggregate(KRUM, {BYZANTINE: 1.0}, updates, scale=(1e100, 1e100))
    # Sums of finite squares that overflow (math.fsum raises on them) are refused alike.
    updates = [(f"c{i}", LinearModel([(-1) ** i * 1e100] * 4, 0.0), 1) for i in range(5)]
    with pytest.raises(ValueError, match="overflow"):
        aggregate(KRUM, {BYZANTINE: 1.0}, updates, scale=(5e53,) * 4)
