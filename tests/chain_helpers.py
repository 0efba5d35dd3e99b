"""Small real chains for the ledger tests, mined at a low difficulty so they build quickly."""

import numpy as np

from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import ClientUpdate
from fedchain.ledger.chain import make_genesis, make_round_block

FEATURES = ("age", "bmi", "smoker")
DIFFICULTY = 8


def build_chain(rounds: int = 3, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    blocks = [
        make_genesis(
            initial_model=LinearModel.zeros(len(FEATURES)),
            feature_names=FEATURES,
            difficulty=DIFFICULTY,
        )
    ]
    for _ in range(rounds):
        updates = {
            name: ClientUpdate(LinearModel(rng.normal(size=len(FEATURES)), rng.normal()), n)
            for name, n in (("cli1", 535), ("cli2", 97))
        }
        blocks.append(make_round_block(blocks[-1], updates))
    return blocks
