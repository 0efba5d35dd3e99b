"""The quality goal: federated rounds on the bundled data come within 0.1% of central lstsq."""

from pathlib import Path

import numpy as np

from dataset import load_dataset
from model import fit_lstsq, mse
from simulation import DEFAULT_ROUNDS, simulate

DATA = Path(__file__).resolve().parent.parent / "data"


def test_default_rounds_reach_the_pooled_lstsq_mse_within_a_tenth_of_a_percent():
    datasets = {f"cli{i}": load_dataset(DATA / f"client{i}.csv") for i in (1, 2)}
    X = np.vstack([d.X for d in datasets.values()])
    y = np.concatenate([d.y for d in datasets.values()])
    history = simulate(datasets)
    assert len(history) == DEFAULT_ROUNDS
    ratio = mse(history[-1].global_model, X, y) / mse(fit_lstsq(X, y), X, y)
    assert ratio <= 1.001
    # Rounds only help: each client starts from the global model and never ends worse on its rows.
    pooled = [mse(r.global_model, X, y) for r in history]
    assert pooled[-1] <= pooled[0]
