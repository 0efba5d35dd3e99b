"""The poisoning goal, in-process: 5 clients on the bundled rows, one sending the received model
plus -10 x its honest change. FedAvg is wrecked; the robust rules hold, multi-Krum within 0.5% of
central lstsq with and without the attacker."""

import numpy as np
import pytest
from test_simulation import DATA, least_squares_mse, pooled

from fedchain.learning.aggregation import BYZANTINE, FEDAVG, KRUM, MEDIAN, TRIMMED_MEAN
from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.learning.partition import split_rows
from fedchain.learning.poisoning import Poison, parse_poison
from fedchain.learning.simulation import simulate

ATTACK = {"cli5": parse_poison("scale=-10")}
# (rule, parameters, most quality without the attacker, most with it)
GOALS = [
    (MEDIAN, {BYZANTINE: 1.0}, 1.06, 1.06),
    (TRIMMED_MEAN, {BYZANTINE: 1.0}, 1.2, 1.2),
    (KRUM, {BYZANTINE: 1.0}, 1.005, 1.005),
]


def five_clients():
    return split_rows(pooled({f"cli{i}": load_dataset(DATA / f"client{i}.csv") for i in (1, 2)}), 5)


def final_quality(rule, parameters, poison):
    datasets = five_clients()
    everything = pooled(datasets)
    history = simulate(datasets, rounds=5, aggregation=rule, parameters=parameters, poison=poison)
    return mse(history[-1].global_model, everything.X, everything.y) / least_squares_mse(everything)


def test_fedavg_is_wrecked_by_one_attacker():
    assert final_quality(FEDAVG, {}, {}) <= 1.001
    assert final_quality(FEDAVG, {}, ATTACK) > 100


@pytest.mark.parametrize(("rule", "parameters", "clean_goal", "attacked_goal"), GOALS)
def test_robust_rules_hold_against_one_attacker(rule, parameters, clean_goal, attacked_goal):
    assert final_quality(rule, parameters, {}) <= clean_goal
    assert final_quality(rule, parameters, ATTACK) <= attacked_goal


def test_krum_leaves_the_attacker_out_every_round():
    history = simulate(five_clients(), rounds=5, aggregation=KRUM, parameters={BYZANTINE: 1.0},
                       poison=ATTACK)  # fmt: skip
    assert all(r.choice["cli5"][1] == 0.0 for r in history)


def test_poisons_do_what_they_say():
    received, trained = LinearModel([1.0, 2.0], 3.0), LinearModel([2.0, 0.0], 3.5)
    scaled = parse_poison("scale=-10").apply(received, trained, seed=0)
    assert scaled == LinearModel([-9.0, 22.0], -2.0)
    noisy = parse_poison("noise=0.5").apply(received, trained, seed=1)
    assert noisy == parse_poison("noise=0.5").apply(received, trained, seed=1)
    assert np.all(noisy.weights != trained.weights)
    assert str(Poison("scale", -10.0)) == "scale=-10"


@pytest.mark.parametrize("text", ["scale", "flip=1", "scale=x", "noise=-1", "scale=inf", ""])
def test_a_bad_poison_is_refused(text):
    with pytest.raises(ValueError):
        parse_poison(text)
