"""The quality goals, in-process: federated rounds come within a stated fraction of the MSE of
central lstsq on the pooled rows, on the bundled data (2 and 32 clients) and on wide synthetic
data (200 and 1,000 features)."""

import numpy as np
import pytest
from learning_helpers import least_squares_mse, pooled
from processes import ROOT

from fedchain.learning.dataset import Dataset, load_dataset
from fedchain.learning.linear_model import fit_lstsq, mse
from fedchain.learning.partition import split_rows
from fedchain.learning.simulation import simulate
from fedchain.learning.synthetic import synthetic_dataset
from fedchain.settings import ROUNDS as DEFAULT_ROUNDS

DATA = ROOT / "data"


def quality_by_round(datasets: dict[str, Dataset], rounds: int) -> list[float]:
    """The pooled-rows MSE of each round's global model, over that of lstsq on the pooled rows."""
    everything = pooled(datasets)
    reference = least_squares_mse(everything)
    history = simulate(datasets, rounds=rounds)
    assert len(history) == rounds
    return [mse(r.global_model, everything.X, everything.y) / reference for r in history]


def load_bundled() -> dict[str, Dataset]:
    return {f"cli{i}": load_dataset(DATA / f"client{i}.csv") for i in (1, 2)}


@pytest.fixture(scope="module")
def bundled():
    return load_bundled()


def test_default_rounds_reach_the_pooled_lstsq_mse_within_a_tenth_of_a_percent(bundled):
    ratios = quality_by_round(bundled, DEFAULT_ROUNDS)
    # And no later round undoes that: every round from the first stays within the goal.
    assert max(ratios) <= 1.001
    # 1.000093 with the search this replaced, which went to each client's own fit every round;
    # the proximal rounds now keep closing in on the pooled fit instead.
    assert ratios[-1] <= 1.000093


def test_32_clients_of_33_rows_reach_one_percent_in_five_rounds(bundled):
    # 23 of the 32 shards have a constant column; their weight there must not wander.
    shards = split_rows(pooled(bundled), 32)
    assert quality_by_round(shards, 5)[-1] <= 1.01


def test_200_features_reach_a_tenth_of_a_percent_in_five_rounds():
    clients = split_rows(synthetic_dataset(20_000, 200), 2)
    assert quality_by_round(clients, 5)[-1] <= 1.001


def test_1000_features_reach_a_tenth_of_a_percent_in_ten_rounds():
    clients = split_rows(synthetic_dataset(20_000, 1000), 2)
    ratios = quality_by_round(clients, 10)
    assert ratios[-1] <= 1.001
    assert ratios == sorted(ratios, reverse=True)  # every round an improvement


def test_synthetic_rows_are_reproducible_and_as_noisy_as_documented():
    data = synthetic_dataset(5_000, 20, seed=3)
    again = synthetic_dataset(5_000, 20, seed=3)
    assert np.array_equal(data.X, again.X) and np.array_equal(data.y, again.y)
    fit = fit_lstsq(data.X, data.y)
    r2 = 1 - mse(fit, data.X, data.y) / np.var(data.y)
    assert r2 == pytest.approx(0.8, abs=0.02)


def test_split_rows_keeps_every_row_in_order():
    data = synthetic_dataset(100, 3)
    shards = split_rows(data, 32)
    assert list(shards) == sorted(shards) and len(shards) == 32
    assert np.array_equal(pooled(shards).X, data.X)
    assert {s.n_samples for s in shards.values()} == {3, 4}


def test_the_reference_is_the_lstsq_mse():
    for data in (pooled(load_bundled()), synthetic_dataset(20_000, 200)):
        lstsq = mse(fit_lstsq(data.X, data.y), data.X, data.y)
        assert least_squares_mse(data) == pytest.approx(lstsq, rel=1e-10)
