"""Scaffold on the chain (format 4): each update carries the client's signed gradients, each
round block the server's step; verification recomputes the step bit for bit, and catches any
change to what it came from."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import SERVER_KEY, reseal
from scaffold_chains import KEYS, NAMES, PROBLEMS, attested, build, genesis, probed

from fedchain.learning.aggregation import FEDAVG, PROXIMAL
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.ledger.block import (
    FORMAT_CORRECTED,
    FORMAT_RULES,
    FORMAT_SIGNED,
)
from fedchain.ledger.chain import make_closing_block, verify_chain
from fedchain.ledger.correction import probe_point
from fedchain.ledger.signatures import (
    sign_hex,
    update_message,
)
from fedchain.ledger.store import block_from_json, block_to_json
from fedchain.ledger.verification import ChainError
from fedchain.wire.messages import ProtocolError, validate_message


def pooled_mse(model):
    X = np.vstack([p.X for p in PROBLEMS.values()])
    y = np.concatenate([p.y for p in PROBLEMS.values()])
    return mse(model, X, y)


def test_a_scaffold_chain_verifies_and_every_step_lowers_the_pooled_mse():
    blocks = build()
    closing = make_closing_block(
        blocks[-1], attestations=attested(blocks[0], blocks[-1]), server_key=SERVER_KEY
    )
    verify_chain([*blocks, closing])
    assert {b.version for b in blocks} == {FORMAT_CORRECTED}
    assert [block_from_json(block_to_json(b)) for b in [*blocks, closing]] == [*blocks, closing]
    for previous, block in itertools.pairwise(blocks):
        candidate = probe_point(block.cli, block.client_model)
        assert pooled_mse(block.server_model) <= pooled_mse(previous.server_model)
        assert pooled_mse(block.server_model) <= pooled_mse(candidate) * (1 + 1e-12)
    # From the second round on, the step uses the last one too (a plane, not a line).
    assert blocks[1].search["coefficients"][1] == 0.0
    assert blocks[2].search["coefficients"][1] != 0.0


def test_a_change_of_clients_restarts_the_search_along_one_line():
    blocks = build(names_by_round=[NAMES, NAMES[:2], NAMES[:2]])
    verify_chain(blocks)
    assert blocks[2].search["coefficients"][1] == 0.0  # s3 left: the last step is not this MSE's
    assert blocks[3].search["coefficients"][1] != 0.0


def resigned(first, previous, name, update, **changes):
    """UPDATE with CHANGES, signed again by its client: what the client itself could send."""
    changed = replace(update, **changes)
    message = update_message(
        genesis_hash=first.hash,
        index=previous.index + 1,
        previous_hash=previous.hash,
        name=name,
        update=changed,
    )
    return replace(changed, signature=sign_hex(KEYS[name], message))


def test_verify_catches_a_changed_input_of_the_step():
    first, block = build(rounds=1)
    name = "s1"
    update = block.client_model[name]
    other_gradient = tuple(v + 1.0 for v in update.gradient)
    # A start gradient changed (and signed again by the client): the step no longer follows.
    updates = dict(
        block.client_model, s1=resigned(first, first, name, update, gradient=other_gradient)
    )
    with pytest.raises(ChainError, match="block 1: server_model is not the step scaffold takes"):
        verify_chain([first, reseal(block, client_model=updates)])
    # Likewise a probe gradient, signed again at the round's candidate.
    candidate = probe_point(block.cli, block.client_model)
    updates = dict(
        block.client_model, s1=probed(first, first, name, update, candidate, at=other_gradient)
    )
    with pytest.raises(ChainError, match="server_model is not the step"):
        verify_chain([first, reseal(block, client_model=updates)])
    # A probe answered at another candidate: the one the server showed this client alone.
    elsewhere = LinearModel(candidate.weights + 1.0, candidate.bias)
    updates = dict(block.client_model, s1=probed(first, first, name, update, elsewhere))
    with pytest.raises(ChainError, match="s1's signature on its probe gradient does not verify"):
        verify_chain([first, reseal(block, client_model=updates)])
    # The gradient changed by the server: the client's signature no longer holds.
    updates = dict(block.client_model, s1=replace(update, gradient=other_gradient))
    with pytest.raises(ChainError, match="s1's signature on its update does not verify"):
        verify_chain([first, reseal(block, client_model=updates)])
    # The step, or the global gradient the next round corrects by, or the model, changed.
    search = dict(block.search, gradient=tuple(0.0 for _ in block.search["gradient"]))
    with pytest.raises(ChainError, match="recorded search is not the step"):
        verify_chain([first, reseal(block, search=search)])
    candidate_block = reseal(block, server_model=candidate)  # plain FedAvg, the step ignored
    with pytest.raises(ChainError, match="server_model is not the step"):
        verify_chain([first, candidate_block])


def test_a_gradient_of_the_wrong_size_is_refused():
    first, block = build(rounds=1)
    update = block.client_model["s1"]
    short = resigned(first, first, "s1", update, gradient=update.gradient[:-1])
    with pytest.raises(ChainError, match="s1's gradients must have 4 numbers each"):
        verify_chain([first, reseal(block, client_model=dict(block.client_model, s1=short))])


def test_the_rule_and_the_format_go_together():
    with pytest.raises(ChainError, match="scaffold runs, and only they"):
        verify_chain([reseal(genesis(), version=FORMAT_RULES)])
    fedavg = genesis(aggregation=FEDAVG, parameters={})
    assert fedavg.version == FORMAT_SIGNED
    with pytest.raises(ChainError, match="scaffold runs, and only they"):
        verify_chain([reseal(fedavg, version=FORMAT_CORRECTED)])
    for bad in ({}, {PROXIMAL: 0.0}, {PROXIMAL: -1.0}, {PROXIMAL: 1e-9}, {PROXIMAL: 1e9}):
        with pytest.raises(ChainError, match="proximal"):
            verify_chain([reseal(genesis(), parameters=bad)])


def test_gradients_belong_to_format_4_and_a_closing_block_records_no_step():
    _, block = build(rounds=1)
    with pytest.raises(ValueError, match="carry no gradients or search"):
        replace(block, version=FORMAT_RULES)
    with pytest.raises(ValueError, match="lacks its gradients or probe signature"):
        replace(
            block,
            client_model=dict(
                block.client_model, s1=replace(block.client_model["s1"], probe_signature="")
            ),
        )
    blocks = build()
    last = blocks[-1]
    closing = make_closing_block(
        last, attestations=attested(blocks[0], last), server_key=SERVER_KEY
    )
    with pytest.raises(ChainError, match="closing block must record no choice of the rule, nor"):
        verify_chain([*blocks, reseal(closing, search=last.search)])


def test_the_messages_of_a_probe_are_checked_field_by_field():
    vector = np.zeros(4)
    probe = {
        "type": "probe",
        "round": 1,
        "weights": np.zeros(3),
        "bias": 0.0,
        "updates": "{}",
        "left": [],
    }
    validate_message(probe)
    validate_message(probe | {"left": ["cli2", "cli3"]})
    for field, bad, reason in [
        ("left", ["cli2", "cli2"], "repeated name"),
        ("left", "cli2", "must be a list"),
        ("left", [" cli2"], "no spaces around it"),
        ("updates", "{\n}", "printable text"),
        ("updates", None, "must be a string"),
    ]:
        with pytest.raises(ProtocolError, match=f"probe message: {field}.*{reason}"):
            validate_message(probe | {field: bad})
    with pytest.raises(ProtocolError, match="probe message lacks left, updates"):
        validate_message({"type": "probe", "round": 1, "weights": np.zeros(3), "bias": 0.0})
    validate_message({"type": "gradient", "round": 1, "gradient": vector, "signature": bytes(64)})
    for bad in (np.array([np.nan, 0.0]), np.zeros(10_002), [0.0, 1.0], np.array([1e300])):
        with pytest.raises(ProtocolError, match="gradient message: gradient"):
            validate_message(
                {"type": "gradient", "round": 1, "gradient": bad, "signature": bytes(64)}
            )
    with pytest.raises(ProtocolError, match="unknown field"):
        validate_message(probe | {"gradient": vector})
