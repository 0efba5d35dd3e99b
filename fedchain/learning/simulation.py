"""Federated rounds in one process, without sockets or a chain.

Both the networked run and this one train each client with the same seed and average in the same
order (clients sorted by name), so for the same inputs they give bit-identical models; the tests
and the benchmark lean on that.
"""

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedchain import settings
from fedchain.learning.aggregation import FEDAVG, PROXIMAL, rule_named
from fedchain.learning.corrected_training import CorrectedProblem, gradient, train_corrected
from fedchain.learning.dataset import Dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.local_training import (
    LocalProblem,
    derive_seed,
    proximal_weight,
    train_locally,
)
from fedchain.learning.poisoning import Poison
from fedchain.learning.privacy import PrivateRelease
from fedchain.learning.scaffold import (
    DEFAULT_PROXIMAL,
    Contribution,
    SearchRecord,
    candidate,
    settle,
)


@dataclass(frozen=True)
class SimulatedRound:
    index: int
    client_models: dict[str, LinearModel]
    global_model: LinearModel
    train_s: dict[str, float]  # each client's local training time, as the network run reports
    choice: dict[str, tuple[float, ...]] | None = None  # what the rule chose, as a block records
    search: SearchRecord | None = None  # scaffold: the server's step, as a block records it


def simulate(
    datasets: Mapping[str, Dataset],
    *,
    rounds: int = settings.ROUNDS,
    run_seed: int = settings.RUN_SEED,
    generations: int = settings.GENERATIONS,
    population: int = settings.POPULATION,
    aggregation: str = FEDAVG,
    parameters: Mapping[str, float] | None = None,
    poison: Mapping[str, Poison] | None = None,
    declared_rows: Mapping[str, int] | None = None,
    scale: Sequence[float] | None = None,
    private: Mapping[str, PrivateRelease] | None = None,
) -> list[SimulatedRound]:
    """Run ROUNDS of train-locally-then-aggregate (FedAvg unless AGGREGATION says otherwise)
    from a zero model, the clients named in POISON sending poisoned models, those in
    DECLARED_ROWS claiming that many rows and those in PRIVATE training on their private release
    instead of their rows; Krum measures distance in SCALE (see aggregation.py). Return every
    round."""
    poison = poison or {}
    problems, rows = _problems(datasets, private or {})
    rows |= dict(declared_rows or {})
    rule = rule_named(aggregation)
    if rule.probes:
        return _simulate_scaffold(
            problems,
            rows,
            rounds,
            run_seed,
            generations,
            population,
            (parameters or {}).get(PROXIMAL, DEFAULT_PROXIMAL),
            poison,
        )
    names = sorted(datasets)
    global_model = LinearModel.zeros(problems[names[0]].n_features)
    history = []
    for index in range(1, rounds + 1):
        client_models, train_s = {}, {}
        for name in names:
            started = time.perf_counter()
            client_models[name] = train_locally(
                problems[name],
                global_model,
                seed=derive_seed(run_seed, name, index),
                generations=generations,
                population=population,
                proximal=proximal_weight(index),
            )
            train_s[name] = time.perf_counter() - started
            if name in poison:
                seed = derive_seed(run_seed, name, index)
                sent = poison[name].apply(global_model, client_models[name], seed=seed)
                client_models[name] = sent
        updates = [(n, client_models[n], rows[n]) for n in names]
        result = rule.aggregate(parameters or {}, updates, scale=scale)
        global_model = result.model
        history.append(SimulatedRound(index, client_models, global_model, train_s, result.choice))
    return history


def _problems(
    datasets: Mapping[str, Dataset], private: Mapping[str, PrivateRelease]
) -> tuple[dict[str, LocalProblem], dict[str, int]]:
    """Each client's problem and the row count it declares: its private release's, if any."""
    problems, counts = {}, {}
    for name, data in datasets.items():
        if name in private:
            problems[name] = LocalProblem.from_moments(private[name].moments)
            counts[name] = private[name].n_samples
        else:
            problems[name] = LocalProblem.from_data(data.X, data.y)
            counts[name] = data.n_samples
    return problems, counts


def _simulate_scaffold(
    problems: Mapping[str, LocalProblem],
    rows: Mapping[str, int],
    rounds: int,
    run_seed: int,
    generations: int,
    population: int,
    proximal: float,
    poison: Mapping[str, Poison],
) -> list[SimulatedRound]:
    """The scaffold rule's rounds, as the network run plays them (see learning/scaffold.py):
    round 1 plain, then corrected training; a probe at the candidate; the server's step."""
    names = sorted(problems)
    corrected = {name: CorrectedProblem(problems[name]) for name in names}
    global_model = LinearModel.zeros(problems[names[0]].n_features)
    record: SearchRecord | None = None
    history = []
    for index in range(1, rounds + 1):
        client_models, train_s, start_gradients = {}, {}, {}
        for name in names:
            seed = derive_seed(run_seed, name, index)
            started = time.perf_counter()
            if record is None:  # round 1: nothing to correct by yet
                client_models[name] = train_locally(
                    problems[name],
                    global_model,
                    seed=seed,
                    generations=generations,
                    population=population,
                )
            else:
                client_models[name] = train_corrected(
                    corrected[name],
                    global_model,
                    np.array(record.gradient),
                    seed=seed,
                    proximal=proximal,
                    generations=generations,
                    population=population,
                ).model
            start_gradients[name] = gradient(problems[name], global_model)
            train_s[name] = time.perf_counter() - started
            if name in poison:
                client_models[name] = poison[name].apply(
                    global_model, client_models[name], seed=seed
                )
        probe = candidate([Contribution(client_models[n], rows[n], (), ()) for n in names])
        contributions = [
            Contribution(
                client_models[n],
                rows[n],
                tuple(start_gradients[n]),
                tuple(gradient(problems[n], probe)),
            )
            for n in names
        ]
        global_model, record = settle(global_model, record, contributions)
        history.append(SimulatedRound(index, client_models, global_model, train_s, None, record))
    return history
