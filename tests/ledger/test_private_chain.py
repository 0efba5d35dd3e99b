"""A private run's chain (formats 6 to 9): the genesis records the schema, the run's limit on ε
and each client's signed statement; verify checks them all, and a server cannot change one."""

from dataclasses import replace

import pytest
from chain_helpers import (
    CLIENT_KEYS,
    DIFFICULTY,
    FEATURES,
    SERVER_KEY,
    attest,
    fixed_key,
    next_round,
    reseal,
    run_record,
)

from fedchain.learning.linear_model import LinearModel
from fedchain.learning.privacy import MECHANISM
from fedchain.learning.schema import parse_schema
from fedchain.ledger.block import PrivacyTerms
from fedchain.ledger.chain import make_closing_block, make_genesis, verify_chain
from fedchain.ledger.report import report_chain
from fedchain.ledger.signatures import sign_privacy
from fedchain.ledger.store import block_from_json, block_to_json
from fedchain.ledger.verification import ChainError
from fedchain.trust.keys import public_hex

SCHEMA = parse_schema("column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n")
SERVER_HEX = public_hex(SERVER_KEY)


def statement(name, epsilon=1.0, delta=1e-5, schema=SCHEMA, server_key=SERVER_HEX):
    return sign_privacy(
        CLIENT_KEYS[name],
        server_key=server_key,
        name=name,
        mechanism=MECHANISM,
        epsilon=epsilon,
        delta=delta,
        schema_digest=schema.digest(),
    )


def terms(max_epsilon=2.0, **statements):
    statements = statements or {"cli1": statement("cli1"), "cli2": statement("cli2", 0.5)}
    return PrivacyTerms(SCHEMA.canonical(), max_epsilon, statements)


def private_genesis(privacy=None, aggregation="fedavg", parameters=None, run=None):
    return make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=replace(run or run_record(2), privacy=privacy or terms()),
        server_key=SERVER_KEY,
        aggregation=aggregation,
        parameters=parameters,
    )


def private_chain():
    import numpy as np

    rng = np.random.default_rng(0)
    blocks = [private_genesis()]
    for _ in range(2):
        blocks.append(next_round(blocks[0], blocks[-1], rng))
    blocks.append(
        make_closing_block(
            blocks[-1], attestations=attest(blocks[0], blocks[-1]), server_key=SERVER_KEY
        )
    )
    return blocks


def test_a_private_chain_verifies_round_trips_and_says_each_client_s_guarantee():
    blocks = private_chain()
    assert [b.version for b in blocks] == [6, 6, 6, 6]
    again = [block_from_json(block_to_json(b)) for b in blocks]
    assert [b.hash for b in again] == [b.hash for b in blocks]
    assert again[0].run.privacy == blocks[0].run.privacy
    verify_chain(again)
    lines = []
    report_chain(again, lines.append, show_blocks=False, server_key=SERVER_HEX)
    assert (
        "privacy, per row of each client's data, as each client signed: cli1 ε 1, δ 1e-05 "
        f"({MECHANISM}); cli2 ε 0.5, δ 1e-05 ({MECHANISM}) (the run admits at most ε 2)" in lines
    )
    assert lines[-1].startswith("valid: 4 blocks")


@pytest.mark.parametrize(
    ("rule", "parameters", "version"),
    [
        ("median", {"byzantine": 0.0}, 7),
        ("scaffold", {"proximal": 0.3}, 8),
        ("krum", {"byzantine": 0.0}, 9),
    ],
)
def test_every_rule_has_its_private_twin(rule, parameters, version):
    keys = {**CLIENT_KEYS, "cli3": fixed_key("cli3")}
    run = replace(run_record(2, keys), min_clients=3)
    genesis = private_genesis(terms(None, cli1=statement("cli1")), rule, parameters, run)
    assert genesis.version == version and genesis.layout == version - 4
    verify_chain([block_from_json(block_to_json(genesis))])


def tampered_genesis(**changes):
    """The genesis with its privacy terms changed, mined and signed again by the server."""
    genesis = private_genesis()
    run = replace(genesis.run, privacy=replace(genesis.run.privacy, **changes))
    return reseal(genesis, run=run)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # The server lowers the ε a client signed: the client's signature no longer holds.
        (
            {
                "statements": {
                    "cli1": replace(statement("cli1"), epsilon=0.5),
                    "cli2": statement("cli2"),
                }
            },
            "cli1's signature on its privacy statement fails",
        ),
        # A statement a client made for another server's runs, or another schema.
        (
            {
                "statements": {
                    "cli1": statement("cli1", server_key="ab" * 32),
                    "cli2": statement("cli2"),
                }
            },
            "cli1's signature on its privacy statement fails",
        ),
        (
            {
                "statements": {
                    "cli1": statement(
                        "cli1",
                        schema=parse_schema(
                            "column,low,high\nage,0,99\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n"
                        ),
                    ),
                    "cli2": statement("cli2"),
                }
            },
            "cli1's signature on its privacy statement fails",
        ),
        (
            {"statements": {"cli1": statement("cli1", 3.0), "cli2": statement("cli2")}},
            "cli1 states ε 3, above the most the run admits, ε 2",
        ),
        (
            {"statements": {"cli1": statement("cli1")}},
            "cli2 states no differential privacy, but the run admits clients only with ε at most 2",
        ),
        (
            {
                "statements": {
                    "cli1": replace(statement("cli1"), mechanism="laplace"),
                    "cli2": statement("cli2"),
                }
            },
            "mechanism 'laplace' is not one this program knows",
        ),
        (
            {"schema": "column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\n"},
            "must bound every feature and the target",
        ),
        (
            {"schema": "column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n"},
            "not written in its canonical form",
        ),
        (
            {"schema": "column,low,high\nage,18,65\nbmi,15,55\nsmoker,1,0\ncharges,6.9,11.5\n"},
            "line 4: smoker: the bounds must be finite with low < high",
        ),
        # A cell past the csv module's limit: refused, not a crash of whoever verifies.
        ({"schema": "column,low,high\n" + "a" * 200_000 + ",0,1\n"}, "field larger than"),
    ],
)
def test_verify_refuses_privacy_terms_that_do_not_hold(changes, reason):
    with pytest.raises(ChainError, match=reason):
        verify_chain([tampered_genesis(**changes)])


def test_without_a_limit_a_client_may_state_nothing():
    genesis = private_genesis(terms(None, cli1=statement("cli1", 8.0)))
    verify_chain([genesis])


def test_only_a_private_format_carries_terms_and_every_private_format_does():
    genesis = private_genesis()
    with pytest.raises(ValueError, match="records privacy terms"):
        replace(genesis, version=2)
    with pytest.raises(ValueError, match="records privacy terms"):
        replace(genesis, run=replace(genesis.run, privacy=None))
    with pytest.raises(ValueError, match="not admitted"):
        replace(genesis.run, privacy=terms(cli9=statement("cli1")))
