"""Small real chains for the ledger tests, mined at a low difficulty so they build quickly."""

import numpy as np

from block import ClientUpdate
from blockchain import make_genesis, make_round_block
from model import LinearModel

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
