"""Robust rules on the chain (format 3; Krum in format 5, with the features' scale): every block
records the rule, its parameters and its choice; verification recomputes them bit for bit and
catches any change to what they came from."""

from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import DIFFICULTY, FEATURES, SERVER_KEY, TRAINING, fixed_key, reseal
from processes import ROOT

from fedchain.learning.aggregation import BYZANTINE, KRUM, MEDIAN, TRIMMED_MEAN, aggregate, fedavg
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import (
    FORMAT_RULES,
    FORMAT_SCALED,
    FORMAT_SIGNED,
    ClientUpdate,
    PrivacyTerms,
    RunRecord,
    TargetRecord,
)
from fedchain.ledger.chain import make_closing_block, make_genesis, make_round_block, verify_chain
from fedchain.ledger.report import LEGACY_KRUM_NOTE, Verdict, report_chain
from fedchain.ledger.signatures import attestation_message, sign_hex, update_message
from fedchain.ledger.store import block_from_json, block_to_json, load_chain
from fedchain.ledger.verification import ChainError
from fedchain.trust.keys import public_hex

NAMES = ("a1", "a2", "a3", "a4", "a5")
KEYS = {name: fixed_key(name) for name in NAMES}
ATTACKER = "a3"
RULES = [(MEDIAN, 1.0), (TRIMMED_MEAN, 1.0), (KRUM, 1.0)]
# A Krum chain written before format 5 (by the code of main at 2d2064d): 5 clients with unequal
# row counts, Krum's kept models FedAvg'ed by them and its distances in raw weight units.
FORMAT_3_KRUM_CHAIN = ROOT / "tests" / "fixtures" / "format3-krum-chain.jsonl"


def genesis(rule, f, *, min_clients=5, scale=None):
    run = RunRecord(
        2, 0, public_hex(SERVER_KEY), {n: public_hex(k) for n, k in KEYS.items()}, min_clients
    )
    return make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=run,
        server_key=SERVER_KEY,
        aggregation=rule,
        parameters={BYZANTINE: f},
        scale=scale,
    )


def signed(first, previous, name, model, n=100):
    unsigned = ClientUpdate(model, n, training=TRAINING)
    message = update_message(
        genesis_hash=first.hash,
        index=previous.index + 1,
        previous_hash=previous.hash,
        name=name,
        update=unsigned,
    )
    return replace(unsigned, signature=sign_hex(KEYS[name], message))


def attestations(first, block):
    message = attestation_message(genesis_hash=first.hash, block=block)
    return {name: sign_hex(KEYS[name], message) for name in NAMES}


def models(rng):
    honest = {
        n: LinearModel(1.0 + 0.01 * rng.normal(size=3), 2.0 + 0.01 * rng.normal()) for n in NAMES
    }
    honest[ATTACKER] = LinearModel(-10 * honest[ATTACKER].weights, -10 * honest[ATTACKER].bias)
    return honest


def build(rule, f, seed=0, *, scale=None, make_models=models, rows=None):
    rng = np.random.default_rng(seed)
    blocks = [genesis(rule, f, scale=scale)]
    for _ in range(2):
        previous = blocks[-1]
        updates = {
            n: signed(blocks[0], previous, n, m, (rows or {}).get(n, 100))
            for n, m in make_models(rng).items()
        }
        attested = attestations(blocks[0], previous) if previous.index else {}
        blocks.append(
            make_round_block(previous, updates, attestations=attested, server_key=SERVER_KEY)
        )
    blocks.append(
        make_closing_block(
            blocks[-1], attestations=attestations(blocks[0], blocks[-1]), server_key=SERVER_KEY
        )
    )
    return blocks


@pytest.mark.parametrize(("rule", "f"), RULES)
def test_a_rule_chain_verifies_and_records_the_rule_and_its_choice(rule, f):
    blocks = build(rule, f)
    verify_chain(blocks)
    # Krum in format 5 with the features' scale (raw units, ones, when none is given); the
    # median and the trimmed mean are written in format 3 exactly as before.
    assert {b.version for b in blocks} == {FORMAT_SCALED if rule == KRUM else FORMAT_RULES}
    assert all(b.aggregation == rule and b.parameters == {BYZANTINE: f} for b in blocks)
    assert all(b.scale == ((1.0,) * 3 if rule == KRUM else ()) for b in blocks)
    round_block = blocks[1]
    assert set(round_block.choice) == set(NAMES)
    if rule == KRUM:  # the attacker is the one left out
        assert [n for n in NAMES if round_block.choice[n][1] == 0.0] == [ATTACKER]
    else:  # the attacker's values are trimmed (-10 x a positive model: always the lowest)
        assert set(round_block.choice[ATTACKER]) == {-1.0}
    # Stored and read back, bit for bit.
    assert [block_from_json(block_to_json(b)) for b in blocks] == blocks


@pytest.mark.parametrize(("rule", "f"), RULES)
def test_verify_catches_a_changed_input_of_each_rule(rule, f):
    blocks = build(rule, f)
    first, middle = blocks[0], blocks[1]
    # A client's model changed (and even signed again by that client): the aggregate and the
    # choice the block records no longer follow from it.
    updates = dict(middle.client_model)
    updates["a1"] = signed(first, blocks[0], "a1", LinearModel([5.0, 5.0, 5.0], 5.0))
    with pytest.raises(ChainError, match=f"block 1: server_model is not what {rule} makes"):
        verify_chain([first, reseal(middle, client_model=updates)])
    # The aggregate changed: FedAvg's, say, as a server ignoring the rule would make.
    fedavg_model = aggregate(
        "fedavg", {}, [(n, u.model, u.n_samples) for n, u in middle.client_model.items()]
    ).model
    with pytest.raises(ChainError, match="server_model is not what"):
        verify_chain([first, reseal(middle, server_model=fedavg_model)])
    # The choice changed: the attacker recorded as kept.
    choice = dict(middle.choice)
    choice[ATTACKER] = tuple(0.0 * v + 1.0 for v in choice[ATTACKER])
    with pytest.raises(ChainError, match=f"recorded choice is not what {rule} chose"):
        verify_chain([first, reseal(middle, choice=choice)])
    # The parameters changed mid-run, or the rule.
    with pytest.raises(ChainError, match=r"parameters .* differ from the genesis"):
        verify_chain([first, reseal(middle, parameters={BYZANTINE: f + 1})])
    other = KRUM if rule != KRUM else MEDIAN
    with pytest.raises(ChainError, match=r"aggregation .* differs from the genesis"):
        verify_chain([first, reseal(middle, aggregation=other)])


def test_a_genesis_whose_quorum_is_below_what_the_rule_needs_is_refused():
    with pytest.raises(ChainError, match="krum needs every round to hold at least 5 clients"):
        genesis(KRUM, 1.0, min_clients=4)
    with pytest.raises(ChainError, match="at least 7 clients"):
        genesis(TRIMMED_MEAN, 3.0)


def test_a_genesis_with_parameters_its_rule_does_not_take_is_refused():
    first = genesis(KRUM, 1.0)
    with pytest.raises(ChainError, match="block 0: krum takes the parameters byzantine"):
        verify_chain([reseal(first, parameters={BYZANTINE: 1.0, "step": 0.5})])
    with pytest.raises(ChainError, match="whole number"):
        verify_chain([reseal(first, parameters={BYZANTINE: 0.5})])


def test_a_robust_rule_in_a_format_2_block_is_refused():
    first = genesis(KRUM, 1.0)
    with pytest.raises(ChainError, match="format-2 chain can only record fedavg"):
        verify_chain([reseal(first, version=FORMAT_SIGNED, parameters={}, scale=())])


def test_a_fedavg_run_is_still_written_in_format_2():
    first = make_genesis(
        initial_model=LinearModel.zeros(3),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=RunRecord(1, 0, public_hex(SERVER_KEY), {"a1": public_hex(KEYS["a1"])}),
        server_key=SERVER_KEY,
    )
    assert first.version == FORMAT_SIGNED and "parameters" not in block_to_json(first)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('"byzantine":1.0', '"byzantine":1', "finite floats"),
        ('"choice":{', '"choice":{"zz":[1],', "finite floats"),
    ],
)
def test_a_stored_rule_block_with_bad_rule_fields_is_refused(old, new, error):
    blocks = build(KRUM, 1.0)
    text = block_to_json(blocks[1]).replace(old, new, 1)
    with pytest.raises((ValueError, TypeError, ChainError), match=error):
        verify_chain([blocks[0], block_from_json(text)])


def test_resuming_compares_the_rule_and_its_parameters_with_the_genesis():
    from fedchain.federation.plan import RunPlan, differences

    recorded = RunPlan.from_genesis(genesis(KRUM, 1.0))
    same = RunPlan(
        difficulty_bits=DIFFICULTY,
        rounds=2,
        seed=0,
        server_key=public_hex(SERVER_KEY),
        n_clients=5,
        min_clients=5,
        aggregation=KRUM,
        aggregation_parameters={BYZANTINE: 1.0},
    )
    assert differences(same, recorded) == []
    assert differences(replace(same, aggregation_parameters={BYZANTINE: 2.0}), recorded) == [
        "the rule's parameters (--byzantine, --proximal) is {'byzantine': 2.0}, but the chain's "
        "genesis records {'byzantine': 1.0}"
    ]
    assert differences(replace(same, aggregation=MEDIAN), recorded) == [
        "--aggregation is median, but the chain's genesis records krum"
    ]


def close_models_with_noise_on_a_large_feature(rng):
    """Honest models that differ in the weight of a feature of small values; the attacker's
    differs from theirs by 0.05 in the weight of one of values near 40 (age, say)."""
    honest = {n: LinearModel([0.03, -0.2 + 0.1 * i, 0.5], 7.0) for i, n in enumerate(NAMES)}
    honest[ATTACKER] = LinearModel([0.08, 0.0, 0.5], 7.0)
    return honest


SCALE = (40.0, 0.1, 0.5)  # root mean squares of the features on the server's held-out rows


def test_krum_on_the_chain_measures_distance_in_the_genesis_scale():
    blocks = build(KRUM, 1.0, scale=SCALE, make_models=close_models_with_noise_on_a_large_feature)
    verify_chain(blocks)
    assert all(b.scale == SCALE for b in blocks)
    middle = blocks[1]
    assert [n for n in NAMES if middle.choice[n][1] == 0.0] == [ATTACKER]
    # A server measuring raw weights keeps the attacker (it looks closer than a1 there): its
    # choice and model are not what the genesis's scale makes, and verification says so.
    updates = [(n, u.model, u.n_samples) for n, u in middle.client_model.items()]
    raw = aggregate(KRUM, {BYZANTINE: 1.0}, updates)
    assert raw.choice[ATTACKER][1] == 1.0
    with pytest.raises(ChainError, match="block 1: server_model is not what krum makes"):
        verify_chain([blocks[0], reseal(middle, server_model=raw.model, choice=raw.choice)])
    with pytest.raises(ChainError, match="block 1: the recorded choice is not what krum chose"):
        verify_chain([blocks[0], reseal(middle, choice=raw.choice)])
    # The scale is the genesis's in every block.
    with pytest.raises(ChainError, match="block 1: the features' scale differs from the genesis"):
        verify_chain([blocks[0], reseal(middle, scale=(1.0, 1.0, 1.0))])


def test_krum_on_the_chain_averages_what_it_keeps_with_equal_weights():
    rows = {"a1": 100, "a2": 100, "a3": 100, "a4": 100, "a5": 2000}  # a5 claims 20x
    blocks = build(KRUM, 1.0, rows=rows)
    verify_chain(blocks)
    middle = blocks[1]
    kept = [middle.client_model[n].model for n in NAMES if middle.choice[n][1] == 1.0]
    assert middle.server_model == fedavg([(model, 1) for model in kept])
    by_rows = fedavg([(middle.client_model[n].model, rows[n]) for n in NAMES if n != ATTACKER])
    with pytest.raises(ChainError, match="server_model is not what krum makes"):
        verify_chain([blocks[0], reseal(middle, server_model=by_rows)])


def test_a_format_3_krum_chain_written_before_still_verifies_as_it_was_written():
    blocks = load_chain(FORMAT_3_KRUM_CHAIN).blocks
    chain = verify_chain(blocks)
    assert chain.closed and {b.version for b in blocks} == {FORMAT_RULES}
    middle = blocks[1]
    kept = [n for n in middle.cli if middle.choice[n][1] == 1.0]
    counts = {middle.client_model[n].n_samples for n in kept}
    assert len(counts) > 1  # so weighing by them and not are told apart
    updates = [middle.client_model[n] for n in kept]
    assert middle.server_model == fedavg([(u.model, u.n_samples) for u in updates])


@pytest.mark.parametrize(
    ("scale", "error"),
    [
        ((1.0, 1.0), "one number for each of the 3 features"),
        ((1.0, 0.0, 1.0), "positive numbers"),
        ((1.0, -2.0, 1.0), "positive numbers"),
        ((1.0, 1e101, 1.0), "positive numbers"),
    ],
)
def test_a_krum_genesis_with_a_bad_scale_is_refused(scale, error):
    with pytest.raises(ChainError, match=f"block 0: .*{error}"):
        genesis(KRUM, 1.0, scale=scale)


def test_a_scale_outside_a_krum_genesis_of_format_5_is_refused():
    first = genesis(KRUM, 1.0)
    with pytest.raises(ValueError, match="blocks of format 5, 9, 13 or 17, and only they"):
        reseal(first, version=FORMAT_RULES)
    with pytest.raises(ChainError, match="format 5 records krum runs only"):
        verify_chain([reseal(first, aggregation=MEDIAN)])
    with pytest.raises(ValueError, match="blocks of format 5, 9, 13 or 17, and only they"):
        reseal(genesis(MEDIAN, 1.0), scale=(1.0, 1.0, 1.0))


def test_verify_says_when_a_krum_chain_is_in_the_legacy_format_3():
    # It verifies as written, but a run started in it today would weigh the kept models by the
    # row counts the clients claim: a reader is told, once.
    said = []
    verdict = report_chain(load_chain(FORMAT_3_KRUM_CHAIN).blocks, said.append)
    assert verdict is Verdict.VALID
    assert said.count(LEGACY_KRUM_NOTE) == 1
    said.clear()
    report_chain(build(KRUM, 1.0), said.append)
    assert LEGACY_KRUM_NOTE not in said


@pytest.mark.parametrize("twin", [7, 11, 15])
def test_krum_in_a_twin_of_the_legacy_format_3_is_refused(twin):
    # Only format 3 itself holds Krum, from before format 5; a twin of it, which no program
    # wrote, would have Krum measure raw units and pass the tools.
    first = genesis(KRUM, 1.0)
    terms = PrivacyTerms("column,low,high\nx0,0,1\n", None, {})
    run = replace(
        first.run,
        privacy=terms if twin in (7, 15) else None,
        target=TargetRecord("y", "") if twin in (11, 15) else None,
    )
    forged = reseal(first, version=twin, scale=(), run=run)
    with pytest.raises(ChainError, match=f"krum runs are written in format 5, .*, not {twin}"):
        verify_chain([forged])
