"""A small private chain with a hostile client name and a hostile reason in it, for the
`blockchain.py report` page: every string the chain holds must reach the page as text."""

from dataclasses import replace

import numpy as np
import pandas as pd
from chain_helpers import (
    DIFFICULTY,
    FEATURES,
    SERVER_KEY,
    attest,
    fixed_key,
    run_record,
    signed_update,
)

from fedchain.learning.linear_model import LinearModel
from fedchain.learning.privacy import MECHANISM
from fedchain.learning.schema import parse_schema
from fedchain.ledger.block import Block, PrivacyTerms
from fedchain.ledger.chain import make_closing_block, make_genesis, make_round_block
from fedchain.ledger.signatures import sign_privacy
from fedchain.trust.keys import public_hex

# A client picks its own name: the page must show these as text, never as markup.
HOSTILE_NAME = '<img src=x onerror="alert(1)">'
HOSTILE_REASON = "timed out</td><script>alert(2)</script>"
KEYS = {"cli1": fixed_key("cli1"), HOSTILE_NAME: fixed_key("hostile")}
ROWS = {"cli1": 535, HOSTILE_NAME: 97}
EPSILON = 1.5
SCHEMA = parse_schema("column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n")


def hostile_chain() -> list[Block]:
    """A closed private run of 2 rounds: both clients in round 1, the hostile one left out of
    round 2 (and the closing block) with a hostile reason; only cli1 promises an ε."""
    statement = sign_privacy(
        KEYS["cli1"],
        server_key=public_hex(SERVER_KEY),
        name="cli1",
        mechanism=MECHANISM,
        epsilon=EPSILON,
        delta=1e-5,
        schema_digest=SCHEMA.digest(),
    )
    privacy = PrivacyTerms(SCHEMA.canonical(), None, {"cli1": statement})
    genesis = make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=DIFFICULTY,
        run=replace(run_record(2, clients=KEYS), privacy=privacy),
        server_key=SERVER_KEY,
    )
    rng = np.random.default_rng(0)
    blocks = [genesis]
    for names in (tuple(KEYS), ("cli1",)):
        previous = blocks[-1]
        updates = {
            name: signed_update(
                genesis,
                previous,
                name,
                LinearModel(rng.normal(size=len(FEATURES)), rng.normal()),
                ROWS[name],
                key=KEYS[name],
            )
            for name in names
        }
        attestations = attest(genesis, previous, names, KEYS) if previous.index > 0 else {}
        missing = {name: HOSTILE_REASON for name in KEYS if name not in names}
        blocks.append(
            make_round_block(
                previous,
                updates,
                attestations=attestations,
                server_key=SERVER_KEY,
                missing=missing,
            )
        )
    blocks.append(
        make_closing_block(
            blocks[-1],
            attestations=attest(genesis, blocks[-1], ("cli1",), KEYS),
            server_key=SERVER_KEY,
            missing={HOSTILE_NAME: HOSTILE_REASON},
        )
    )
    return blocks


def metrics_for(blocks: list[Block]) -> pd.DataFrame:
    """A server's metrics file for BLOCKS, its errors made up: the figure's data."""
    rows = [
        {
            "round": block.index,
            "client": name,
            "local_mse_after": 0.2 + 0.1 / block.index,
            "test_mse": 0.19 + 0.1 / block.index,
            "block_hash": block.hash,
        }
        for block in blocks
        if block.cli
        for name in block.cli
    ]
    return pd.DataFrame(rows)
