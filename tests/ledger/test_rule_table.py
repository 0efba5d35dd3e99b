"""The rule table: each rule is written in a format the ledger knows, and a new rule is one entry
in RULES, which the chain, its verification and the server's flags then take as they are."""

import argparse
from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import DIFFICULTY, FEATURES, SERVER_KEY, attest, reseal, run_record
from chain_helpers import next_round as signed_round

from fedchain.cli.server import aggregation_parameters
from fedchain.learning.aggregation import (
    BYZANTINE,
    KNOWN_RULES,
    ROBUST_RULES,
    RULES,
    Aggregate,
    Rule,
    fedavg,
)
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import (
    FORMAT_CORRECTED,
    FORMAT_RULES,
    FORMAT_SCALED,
    FORMAT_SIGNED,
    KNOWN_FORMATS,
    PRIVATE_TWIN,
)
from fedchain.ledger.chain import make_closing_block, make_genesis, verify_chain
from fedchain.ledger.verification import ChainError


def test_every_rule_is_written_in_a_public_format_with_a_private_twin():
    for rule in RULES.values():
        assert rule.format in KNOWN_FORMATS and rule.format in PRIVATE_TWIN, rule.name
        assert (rule.format == FORMAT_CORRECTED) == rule.probes, rule.name
        assert (rule.format == FORMAT_SCALED) == rule.scaled, rule.name
        assert (rule.format == FORMAT_SIGNED) == (not rule.parameters), rule.name
        assert (rule.combine is None) == rule.probes, rule.name


def test_the_rule_names_are_read_off_the_table():
    assert KNOWN_RULES == ("fedavg", "median", "trimmed-mean", "krum", "scaffold")
    assert ROBUST_RULES == ("median", "trimmed-mean", "krum")


def test_each_rule_has_its_name_as_the_docs_write_it():
    titles = {name: rule.title for name, rule in RULES.items()}
    assert titles == {
        "fedavg": "FedAvg",
        "median": "median",
        "trimmed-mean": "trimmed mean",
        "krum": "Krum",
        "scaffold": "scaffold",
    }
    assert MEAN.title == "mean", "a rule given no title is written as it is named"


def some_updates(n_clients):
    rng = np.random.default_rng(0)
    return [
        (f"cli{i}", LinearModel(rng.normal(size=len(FEATURES)), float(rng.normal())), 10 + i)
        for i in range(n_clients)
    ]


@pytest.mark.parametrize("name", [name for name, rule in RULES.items() if rule.combine])
def test_what_a_rule_says_it_chose_is_what_its_choice_holds(name):
    rule = RULES[name]
    parameters = {BYZANTINE: 1.0} if rule.robust else {}
    updates = some_updates(rule.clients_needed(parameters))
    choice = rule.aggregate(parameters, updates).choice
    if not rule.parameters:
        assert choice == {} and not rule.keeps_clients and not rule.counts_used_values
    elif rule.keeps_clients:  # a score and whether the whole model was kept
        assert all(len(c) == 2 and c[1] in (0.0, 1.0) for c in choice.values())
        assert not rule.counts_used_values
    else:  # each value's side: -1 trimmed low, 0 used, +1 trimmed high
        assert all(len(c) == len(FEATURES) + 1 for c in choice.values())
        assert {v for c in choice.values() for v in c} <= {-1.0, 0.0, 1.0}


def unweighted_mean(updates, f, scale, kept_by_rows):
    """A rule for the test: every model counts the same, whatever rows its client claims."""
    return Aggregate(fedavg([(model, 1) for _, model, _ in updates]), {})


MEAN = Rule(
    "mean", (BYZANTINE,), format=FORMAT_RULES, combine=unweighted_mean, needed=lambda f: f + 1
)


@pytest.fixture
def mean_rule(monkeypatch):
    monkeypatch.setitem(RULES, MEAN.name, MEAN)
    return MEAN


def test_a_new_rule_is_one_entry(mean_rule):
    run = replace(run_record(2), min_clients=2)  # what the rule needs with one attacker
    first = make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=run,
        server_key=SERVER_KEY,
        aggregation=mean_rule.name,
        parameters={BYZANTINE: 1.0},
    )
    assert first.version == FORMAT_RULES
    rng = np.random.default_rng(0)
    blocks = [first]
    for _ in range(2):
        blocks.append(signed_round(first, blocks[-1], rng))
    blocks.append(
        make_closing_block(
            blocks[-1], attestations=attest(first, blocks[-1]), server_key=SERVER_KEY
        )
    )
    made = blocks[1].server_model
    models = [blocks[1].client_model[name].model for name in blocks[1].cli]
    assert np.array_equal(made.weights, (models[0].weights + models[1].weights) / 2.0)
    assert verify_chain(blocks).closed

    weighted = fedavg([(u.model, u.n_samples) for u in blocks[1].client_model.values()])
    blocks[1] = reseal(blocks[1], server_model=weighted)
    with pytest.raises(ChainError, match="is not what mean makes of the client models"):
        verify_chain(blocks[:2])


def test_a_new_rule_takes_its_flags_from_the_table(mean_rule):
    def flags(**given):
        defaults = {
            "aggregation": mean_rule.name,
            "byzantine": None,
            "proximal": None,
            "min_clients": None,
            "clients": 3,
        }
        return argparse.Namespace(**(defaults | given))

    assert aggregation_parameters(flags()) == {BYZANTINE: 1.0}
    assert aggregation_parameters(flags(byzantine=2)) == {BYZANTINE: 2.0}
    assert "needs at least 4 clients a round" in aggregation_parameters(flags(byzantine=3))
    assert aggregation_parameters(flags(proximal=0.5)) == "--proximal is for --aggregation scaffold"
