"""The private release: its noise is what the accountant says, a row moves it no further than
the sensitivity it is calibrated to, and an audit of many releases on neighbouring data sets
finds no more privacy loss than the guarantee allows (and does find it when the noise is short)."""

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from learning_helpers import synthetic
from scipy.stats import beta

from fedchain.learning import privacy
from fedchain.learning.corrected_training import gradient
from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse
from fedchain.learning.local_training import LocalProblem, train_locally
from fedchain.learning.moments import Moments
from fedchain.learning.partition import split_rows
from fedchain.learning.simulation import simulate
from fedchain.learning.synthetic import TARGET, synthetic_dataset, synthetic_schema

DELTA = 1e-5


@pytest.mark.parametrize(
    ("epsilon", "delta", "n_features"),
    [
        (0.5, DELTA, 12),
        (1.0, DELTA, 12),
        (4.0, DELTA, 12),
        (0.01, DELTA, 3),
        (1.0, 1e-9, 1),
        (2.0, 0.1, 40),
        (100.0, DELTA, 12),
    ],
)
def test_the_two_releases_compose_to_the_budget_by_the_pld_accountant(epsilon, delta, n_features):
    sums, floor = privacy.noise_scales(epsilon, delta, n_features)
    sums_sensitivity, floor_sensitivity = privacy.sensitivities(n_features)
    accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(dp_event.GaussianDpEvent(sums / sums_sensitivity))
    accountant.compose(dp_event.GaussianDpEvent(floor / floor_sensitivity))
    # The accountant's discretisation errs on the safe side by a little; no noise is wasted.
    assert epsilon * (1 - 1e-9) <= accountant.get_epsilon(delta) <= epsilon * 1.002


def test_the_issue_s_calibration_point():
    assert privacy.noise_multiplier(1.0, DELTA) == pytest.approx(3.73, abs=0.005)


def test_budgets_out_of_range_are_refused():
    for epsilon, delta in (
        (0.0, DELTA),
        (-1.0, DELTA),
        (math.inf, DELTA),
        (1.0, 0.0),
        (1.0, 0.5),
        (1, DELTA),
    ):
        with pytest.raises(ValueError):
            privacy.check_budget(epsilon, delta)


def bounds(n_features):
    low = np.append(np.full(n_features, -2.0), -10.0)
    high = np.append(np.full(n_features, 3.0), 10.0)
    return low, high


def test_rows_are_clipped_to_the_bounds_and_each_coordinate_stays_within_its_share():
    rng = np.random.default_rng(0)
    X, y = rng.normal(0, 3, (500, 4)), rng.normal(0, 8, 500)
    low, high = bounds(4)
    Z, cut = privacy.scaled_rows(X, y, low, high)
    outside = np.count_nonzero(np.column_stack([X, y]) < low) + np.count_nonzero(
        np.column_stack([X, y]) > high
    )
    assert cut == outside > 0
    assert np.abs(Z).max() <= 1 / math.sqrt(6) + 1e-15
    assert np.linalg.norm(Z, axis=1).max() <= 1 + 1e-15
    assert np.all(Z[:, 4] == 1 / math.sqrt(6))


def triangle(matrix):
    return matrix[np.triu_indices(matrix.shape[0])]


def test_one_row_moves_the_sums_and_their_smallest_eigenvalue_no_further_than_the_sensitivity():
    rng = np.random.default_rng(1)
    n_features = 5
    low, high = bounds(n_features)
    sums_bound, floor_bound = privacy.sensitivities(n_features)
    X, y = rng.uniform(-2, 3, (40, n_features)), rng.uniform(-10, 10, 40)
    Z, _ = privacy.scaled_rows(X, y, low, high)
    q = n_features + 1
    for row in Z:
        moved = np.outer(row, row)
        assert np.linalg.norm(triangle(moved)) <= sums_bound + 1e-15
        without = Z.T @ Z - moved
        shift = np.linalg.eigvalsh((Z.T @ Z)[:q, :q])[0] - np.linalg.eigvalsh(without[:q, :q])[0]
        assert -1e-12 <= shift <= floor_bound + 1e-12
    corner, _ = privacy.scaled_rows(high[None, :-1], high[-1:], low, high)
    assert np.linalg.norm(triangle(np.outer(corner[0], corner[0]))) == pytest.approx(sums_bound)


def test_exact_sums_pose_the_problem_the_rows_do():
    X, y = synthetic(3)
    moments = Moments.of_rows(X, y)
    model = LinearModel(np.linspace(-1, 1, X.shape[1]), 0.5)
    assert moments.mse(model) == pytest.approx(mse(model, X, y), rel=1e-9)
    from_sums = LocalProblem.from_moments(moments)
    np.testing.assert_allclose(
        gradient(from_sums, model), gradient(LocalProblem.from_data(X, y), model), rtol=1e-8
    )
    trained = train_locally(from_sums, LinearModel.zeros(X.shape[1]), seed=0)
    assert mse(trained, X, y) <= mse(fit_lstsq(X, y), X, y) * 1.01


def test_noisy_sums_that_are_not_positive_definite_are_refused_not_searched():
    gram = Moments.of_rows(*synthetic(4)).gram.copy()
    gram[0, 0] = -gram[0, 0]
    with pytest.raises(ValueError, match="positive definite"):
        LocalProblem.from_moments(Moments(gram))


# The audit. D' has AUDIT_ROWS rows inside the bounds; D is D' plus a corner row, the row that
# moves the sums furthest. Many releases of each are projected on the direction the corner row
# moves them, which is the most telling statistic (the likelihood ratio of two Gaussians).
AUDIT_ROWS, AUDIT_FEATURES, AUDIT_RELEASES = 3000, 3, 3000


def audit_statistics(epsilon):
    rng = np.random.default_rng(7)
    low, high = bounds(AUDIT_FEATURES)
    X = rng.uniform(low[:-1], high[:-1], (AUDIT_ROWS, AUDIT_FEATURES))
    y = rng.uniform(low[-1], high[-1], AUDIT_ROWS)
    neighbours = {
        "D'": (X, y),
        "D": (np.vstack([X, high[:-1]]), np.append(y, high[-1])),
    }
    inverse = np.linalg.inv(privacy.scaling(low, high))
    Z = privacy.scaled_rows(X, y, low, high)[0]
    base = triangle(Z.T @ Z)
    corner = privacy.scaled_rows(high[None, :-1], high[-1:], low, high)[0][0]
    shift = triangle(np.outer(corner, corner))
    direction = shift / np.linalg.norm(shift)
    statistics = {}
    for name, (rows, target) in neighbours.items():
        values = []
        for seed in range(AUDIT_RELEASES):
            released = privacy.release(
                rows,
                target,
                low,
                high,
                epsilon=epsilon,
                delta=DELTA,
                rng=np.random.default_rng([seed, len(target)]),
            )
            assert released.ridge == 0.0  # so the sums are all there is to see
            scaled = inverse @ released.moments.gram @ inverse.T
            values.append((triangle(scaled) - base) @ direction)
        statistics[name] = np.array(values)
    return statistics, np.linalg.norm(shift)


def empirical_epsilon(with_row, without_row, confidence=0.99):
    """The largest ε that thresholds on the statistic prove, at CONFIDENCE (Clopper-Pearson)."""
    n = len(with_row)
    best = 0.0
    for threshold in np.quantile(without_row, np.linspace(0.5, 0.995, 60)):
        hits_with = int(np.count_nonzero(with_row > threshold))
        hits_without = int(np.count_nonzero(without_row > threshold))
        p_with = beta.ppf(1 - confidence, hits_with, n - hits_with + 1) if hits_with else 0.0
        p_without = beta.ppf(confidence, hits_without + 1, n - hits_without)
        if p_with > DELTA:
            best = max(best, math.log((p_with - DELTA) / p_without))
    return best


def test_an_audit_of_neighbouring_releases_finds_the_calibrated_gaussian_and_no_more_loss():
    statistics, shift = audit_statistics(1.0)
    sigma = privacy.noise_scales(1.0, DELTA, AUDIT_FEATURES)[0]
    assert shift == pytest.approx(privacy.sensitivities(AUDIT_FEATURES)[0])
    spread = 4 * sigma / math.sqrt(AUDIT_RELEASES)
    assert abs(statistics["D'"].mean()) < spread
    assert abs(statistics["D"].mean() - shift) < spread
    for values in statistics.values():
        assert values.std() == pytest.approx(sigma, rel=0.06)
    assert empirical_epsilon(statistics["D"], statistics["D'"]) <= 1.0
    assert empirical_epsilon(-statistics["D'"], -statistics["D"]) <= 1.0
    # Thresholds on 3,000 draws see only a gross shortfall (they pass noise 0.63 times too
    # small, a true ε of 1.7), and sigma above is the code's own figure: so also ask the
    # accountant what the noise measured here costs, with the eigenvalue's share composed in.
    audited = audited_epsilon(statistics, shift, 1.0)
    assert audited <= 1.05, f"the audited noise spends ε {audited:.3f}"


def audited_epsilon(statistics, shift, epsilon):
    """The ε, by the PLD accountant, of the noise measured along the corner row's move, composed
    with the eigenvalue's release (unseen here: its noise as the code states it)."""
    measured = math.sqrt((statistics["D"].var() + statistics["D'"].var()) / 2)
    floor_noise = privacy.noise_scales(epsilon, DELTA, AUDIT_FEATURES)[1]
    accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(dp_event.GaussianDpEvent(measured / shift))
    accountant.compose(
        dp_event.GaussianDpEvent(floor_noise / privacy.sensitivities(AUDIT_FEATURES)[1])
    )
    return accountant.get_epsilon(DELTA)


def test_the_audit_catches_a_release_whose_noise_falls_short(monkeypatch):
    calibrated = privacy.noise_multiplier
    monkeypatch.setattr(privacy, "noise_multiplier", lambda e, d: calibrated(e, d) / 4)
    statistics, _ = audit_statistics(1.0)
    assert empirical_epsilon(statistics["D"], statistics["D'"]) > 1.0


def test_the_audit_catches_noise_for_a_sensitivity_of_one_halved(monkeypatch):
    # A plausible slip: the textbook noise (sensitivity 1), halved for the triangle's "half".
    # It is 0.63 times the calibrated noise, too little to show in thresholds on 3,000 draws.
    floor = privacy.noise_scales(1.0, DELTA, AUDIT_FEATURES)[1]
    halved = privacy.noise_multiplier(1.0, DELTA) / 2
    monkeypatch.setattr(privacy, "noise_scales", lambda e, d, n: (halved, floor))
    with pytest.raises(AssertionError, match=r"the audited noise spends ε 1\.[5-9]"):
        test_an_audit_of_neighbouring_releases_finds_the_calibrated_gaussian_and_no_more_loss()


def private_ratio(epsilon, seed, aggregation="fedavg"):
    data = synthetic_dataset(40_000, 12, seed=seed, bounded=True)
    low, high = synthetic_schema(12, seed=seed).ranges(data.feature_names, TARGET)
    clients = split_rows(data, 2)
    rng = np.random.default_rng([seed, 99])
    private = {
        name: privacy.release(c.X, c.y, low, high, epsilon=epsilon, rng=rng)
        for name, c in sorted(clients.items())
    }
    model = simulate(clients, rounds=5, private=private, aggregation=aggregation)[-1].global_model
    return mse(model, data.X, data.y) / mse(fit_lstsq(data.X, data.y), data.X, data.y)


def test_the_issue_s_goals_on_two_clients_of_20000_bounded_rows():
    assert max(private_ratio(1.0, seed) for seed in (0, 1, 2)) <= 1.03
    assert private_ratio(4.0, 0) <= 1.003


def test_no_model_s_mse_on_the_noisy_sums_is_below_zero():
    data = synthetic_dataset(300, 4, seed=5, r2=0.99, bounded=True)
    low, high = synthetic_schema(4, seed=5, r2=0.99).ranges(data.feature_names, TARGET)
    for seed in range(20):  # at ε 0.1 the noise on yᵀy is far larger than what the fit leaves
        released = privacy.release(
            data.X, data.y, low, high, epsilon=0.1, rng=np.random.default_rng(seed)
        )
        assert np.linalg.eigvalsh(released.moments.gram / released.moments.count)[0] > -1e-9
