"""Aggregation rules: how the server turns the clients' models into the next global model."""

from collections.abc import Sequence

import numpy as np

from fedchain.learning.linear_model import LinearModel


def fedavg(updates: Sequence[tuple[LinearModel, int]]) -> LinearModel:
    """Average models weighted by their sample counts, summed in the order given."""
    # Federated averaging (McMahan et al. 2017, "Communication-Efficient Learning of Deep
    # Networks from Decentralized Data"): weighting by n_samples makes the average what a
    # single model trained on the pooled rows would lean towards. The explicit loop fixes the
    # order of the float additions, so the server and every verifier get the same bits.
    if not updates:
        raise ValueError("fedavg needs at least one client model")
    n_features = updates[0][0].n_features
    total = 0
    weight_sum = np.zeros(n_features)
    bias_sum = 0.0
    with np.errstate(over="ignore"):  # overflow is checked once, below, with a clear message
        for model, n_samples in updates:
            if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
                raise TypeError(f"a sample count must be an integer, not {n_samples!r}")
            if n_samples <= 0:
                raise ValueError(f"a sample count must be positive, not {n_samples}")
            if model.n_features != n_features:
                raise ValueError(
                    f"models differ in feature count ({model.n_features} != {n_features})"
                )
            total += int(n_samples)
            weight_sum = weight_sum + float(n_samples) * model.weights
            bias_sum = bias_sum + float(n_samples) * model.bias
    if not (np.all(np.isfinite(weight_sum)) and np.isfinite(bias_sum)):
        raise ValueError("the client models are too large to average in float64 (overflow)")
    return LinearModel(weight_sum / float(total), bias_sum / float(total))
