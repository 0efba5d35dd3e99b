"""The quality goal: federated rounds on the bundled data come within 0.1% of central lstsq."""

import numpy as np
from processes import ROOT

from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import fit_lstsq, mse
from fedchain.learning.simulation import simulate
from fedchain.settings import ROUNDS as DEFAULT_ROUNDS

DATA = ROOT / "data"


def test_default_rounds_reach_the_pooled_lstsq_mse_within_a_tenth_of_a_percent():
    datasets = {f"cli{i}": load_dataset(DATA / f"client{i}.csv") for i in (1, 2)}
    X = np.vstack([d.X for d in datasets.values()])
    y = np.concatenate([d.y for d in datasets.values()])
    history = simulate(datasets)
    assert len(history) == DEFAULT_ROUNDS
    reference = mse(fit_lstsq(X, y), X, y)
    ratios = [mse(r.global_model, X, y) / reference for r in history]
    assert ratios[-1] <= 1.001
    # And no later round undoes that: every round from the first stays within the goal.
    assert max(ratios) <= 1.001
