"""A run's plan: the one a genesis records, and every way the flags' plan can differ from it,
named by its flag (the command line's refusals are checked end to end in test_faults.py)."""

import socket
from dataclasses import replace

import pytest
from chain_helpers import CLIENT_KEYS, DIFFICULTY, FEATURES, SERVER_KEY, fixed_key, run_record

from fedchain.federation.plan import RunPlan, differences
from fedchain.federation.server import FederationServer
from fedchain.learning.aggregation import BYZANTINE, TRIMMED_MEAN
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.schema import parse_schema
from fedchain.ledger.block import PrivacyTerms
from fedchain.ledger.chain import make_genesis
from fedchain.trust.keys import public_hex

SCHEMA = parse_schema("column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n")
KEYS = {name: public_hex(key) for name, key in CLIENT_KEYS.items()}


def private_genesis():
    run = replace(run_record(3), privacy=PrivacyTerms(SCHEMA.canonical(), None, {}))
    return make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=run,
        server_key=SERVER_KEY,
        aggregation=TRIMMED_MEAN,
        parameters={BYZANTINE: 0.0},
    )


FLAGS = RunPlan(
    n_clients=2,
    min_clients=1,
    rounds=3,
    difficulty_bits=DIFFICULTY,
    seed=0,
    server_key=public_hex(SERVER_KEY),
    aggregation=TRIMMED_MEAN,
    aggregation_parameters={BYZANTINE: 0.0},
    schema=SCHEMA,
)


def test_a_genesis_gives_the_plan_it_records():
    recorded = RunPlan.from_genesis(private_genesis())
    assert recorded == replace(FLAGS, features=FEATURES, authorized_keys=KEYS)
    assert recorded.schema.canonical() == SCHEMA.canonical()


def test_the_flags_plan_matches_its_genesis_whatever_it_leaves_open():
    recorded = RunPlan.from_genesis(private_genesis())
    assert differences(FLAGS, recorded) == []
    assert (
        differences(replace(FLAGS, features=FEATURES[::-1], authorized_keys=KEYS), recorded) == []
    )


def test_every_difference_is_named_by_its_flag():
    recorded = RunPlan.from_genesis(private_genesis())
    other_schema = parse_schema("column,low,high\nage,0,99\nbmi,15,55\nsmoker,0,1\n")
    wanted = replace(
        FLAGS,
        n_clients=3,
        min_clients=2,
        rounds=4,
        difficulty_bits=DIFFICULTY + 1,
        seed=5,
        server_key=public_hex(fixed_key("another server")),
        schema=other_schema,
        max_epsilon=2.0,
        features=("age", "bmi"),
        authorized_keys={**KEYS, "cli3": KEYS["cli1"]},
    )
    found = differences(wanted, recorded)
    assert found[:5] == [
        f"--difficulty is {DIFFICULTY + 1}, but the chain's genesis records {DIFFICULTY}",
        "--rounds is 4, but the chain's genesis records 3",
        "--seed is 5, but the chain's genesis records 0",
        "--clients is 3, but the chain's genesis records 2",
        "--min-clients is 2, but the chain's genesis records 1",
    ]
    assert found[5:7] == [
        "--schema differs from the bounds the chain's genesis records",
        "--max-epsilon is 2.0, but the chain's genesis records None",
    ]
    assert found[7].startswith("the server key ") and "(--key) is not the one" in found[7]
    assert found[8].startswith("the --test data's columns differ from the chain's: ")
    assert found[9] == (
        "--authorized-keys differs from the clients the chain's genesis admitted (as to cli3)"
    )
    assert differences(replace(FLAGS, schema=None), recorded)[0] == (
        "--schema is not given, but the chain's genesis records bounds"
    )


def test_a_plan_refuses_a_quorum_beyond_its_clients():
    with pytest.raises(ValueError, match="min_clients 3 must be 1"):
        replace(FLAGS, min_clients=3)


def test_the_server_refuses_a_plan_for_another_key(tmp_path):
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        pytest.raises(ValueError, match="server key"),
    ):
        FederationServer(
            listener, tmp_path / "chain.jsonl", print, key=fixed_key("another"), plan=FLAGS
        )
