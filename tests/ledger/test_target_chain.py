"""A run's target on the chain (formats 10 to 17): the genesis names the column the run predicts
and its unit, under the hash; every other block is its untargeted twin's."""

import json
from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import DIFFICULTY, FEATURES, SERVER_KEY, attest, next_round, reseal, run_record

from fedchain.learning.linear_model import LinearModel
from fedchain.learning.schema import parse_schema
from fedchain.ledger.block import (
    KNOWN_FORMATS,
    TARGET_TWIN,
    PrivacyTerms,
    TargetRecord,
    compute_hash,
    layout_of,
    spans,
)
from fedchain.ledger.chain import make_closing_block, make_genesis, verify_chain
from fedchain.ledger.store import block_from_json, block_to_json
from fedchain.ledger.verification import ChainError

TARGET = TargetRecord("charges", "ln(USD per year)")


def targeted_genesis(target=TARGET, aggregation="fedavg", parameters=None):
    return make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=replace(run_record(2), target=target),
        server_key=SERVER_KEY,
        aggregation=aggregation,
        parameters=parameters,
    )


def targeted_chain():
    rng = np.random.default_rng(0)
    blocks = [targeted_genesis()]
    for _ in range(2):
        blocks.append(next_round(blocks[0], blocks[-1], rng))
    attested = attest(blocks[0], blocks[-1])
    blocks.append(make_closing_block(blocks[-1], attestations=attested, server_key=SERVER_KEY))
    return blocks


def test_a_targeted_chain_verifies_and_round_trips_with_its_target():
    blocks = targeted_chain()
    assert [b.version for b in blocks] == [10] * 4
    again = [block_from_json(block_to_json(b)) for b in blocks]
    assert [compute_hash(b) for b in again] == [b.hash for b in blocks]
    assert again[0].run.target == TARGET and again[0].targeted
    assert verify_chain(again).closed


@pytest.mark.parametrize(
    ("rule", "parameters", "version"),
    [("median", {"byzantine": 0.0}, 11), ("scaffold", {"proximal": 0.3}, 12)],
)
def test_make_genesis_writes_the_targeted_twin_when_the_run_names_its_target(
    rule, parameters, version
):
    genesis = targeted_genesis(aggregation=rule, parameters=parameters)
    assert genesis.version == version == TARGET_TWIN[version - 8]
    assert genesis.layout == version - 8
    untargeted = make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=run_record(2),
        server_key=SERVER_KEY,
        aggregation=rule,
        parameters=parameters,
    )
    assert untargeted.version == version - 8


def test_every_format_lays_out_as_one_of_the_first_five():
    assert {layout_of(v) for v in KNOWN_FORMATS} == {1, 2, 3, 4, 5}
    assert [layout_of(v) for v in (14, 15, 16, 17)] == [2, 3, 4, 5]


def test_formats_are_named_in_spans():
    assert spans([6, 7, 8, 9, 14, 15, 16, 17]) == "6 to 9 or 14 to 17"
    assert spans([4, 8, 12, 16]) == "4, 8, 12 or 16"


def test_the_unit_is_under_the_hash():
    genesis = targeted_genesis()
    forged = replace(genesis, run=replace(genesis.run, target=replace(TARGET, unit="USD")))
    assert compute_hash(forged) != genesis.hash
    with pytest.raises(ChainError, match="hash"):
        verify_chain([forged])


def test_only_a_targeted_genesis_records_a_target_and_every_one_does():
    genesis = targeted_genesis()
    with pytest.raises(ValueError, match="and only one, records the run's target"):
        replace(genesis, version=2)  # the twin without a target section
    with pytest.raises(ValueError, match="and only one, records the run's target"):
        replace(genesis, run=replace(genesis.run, target=None))
    # A round block of a targeted run carries no run, so no target, and hashes as its twin's.
    round_block = targeted_chain()[1]
    assert round_block.run is None
    with pytest.raises(ValueError, match="only the genesis, records the run"):
        replace(round_block, run=genesis.run)


@pytest.mark.parametrize(
    ("column", "unit", "reason"),
    [
        ("", "USD", "the target column must be 1..64"),
        (" charges", "USD", "no spaces around it"),
        ("charges", "x" * 201, "unit must be 0..200 characters"),
        ("charges", "USD\n", "unit must be printable"),
        ("charges", None, "unit must be 0..200 characters"),
    ],
)
def test_a_target_record_refuses_a_bad_column_or_unit(column, unit, reason):
    with pytest.raises((ValueError, TypeError), match=reason):
        TargetRecord(column, unit)


def test_an_unstated_unit_is_kept_as_such():
    genesis = targeted_genesis(TargetRecord("y"))
    assert block_from_json(block_to_json(genesis)).run.target == TargetRecord("y", "")


def test_a_target_that_is_also_a_feature_is_refused():
    genesis = targeted_genesis()
    forged = reseal(genesis, run=replace(genesis.run, target=TargetRecord("bmi", "")))
    with pytest.raises(ChainError, match="the target column 'bmi' is also one of the features"):
        verify_chain([forged])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t.pop("unit"), "run.target lacks unit"),
        (lambda t: t.update(extra=1), "run.target has unknown field"),
        (lambda t: t.update(unit=3), "run.target.unit must be a JSON str"),
        (lambda t: t.update(column=None), "run.target.column must be a JSON str"),
    ],
)
def test_a_stored_target_is_read_strictly(change, reason):
    record = json.loads(block_to_json(targeted_genesis()))
    change(record["run"]["target"])
    with pytest.raises((ValueError, TypeError), match=reason):
        block_from_json(json.dumps(record))


def test_an_untargeted_genesis_may_not_carry_a_stored_target():
    record = json.loads(block_to_json(targeted_genesis()))
    record["version"] = 2
    with pytest.raises(ValueError, match="run has unknown field"):
        block_from_json(json.dumps(record))


def test_a_private_run_s_schema_must_bound_the_target_it_names():
    schema = parse_schema("column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n")
    genesis = make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=replace(
            run_record(2),
            privacy=PrivacyTerms(schema.canonical(), None, {}),
            target=TargetRecord("charges", "ln(USD per year)"),
        ),
        server_key=SERVER_KEY,
    )
    assert genesis.version == 14
    forged = reseal(genesis, run=replace(genesis.run, target=TargetRecord("y", "")))
    with pytest.raises(ChainError, match="schema does not bound the target 'y'"):
        verify_chain([forged])
