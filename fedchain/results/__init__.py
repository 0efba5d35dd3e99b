"""The result of a run, for a notebook: a verified chain as pandas tables, its global model in
scikit-learn's names, and the same federation run in this process.

    from fedchain.results import load_model, load_rounds, simulated_rounds
    rounds = load_rounds("chain.jsonl", server_key=HEX)  # verified; a row per round and client
    model = load_model("chain.jsonl", server_key=HEX)    # the last round's: coef_, predict, score

Every load_* verifies the chain and takes what its reader expects of it: min_difficulty, the
server's key (server_key=HEX, or known_servers=FILE: a key that file records), allow_unsigned.
With no key pinned, an UnpinnedChainWarning says anyone could have made the chain.
"""

from pathlib import Path

import pandas as pd

from fedchain.results.chain_model import ChainModel, ModelFileError, model_from_json
from fedchain.results.history import (
    UnpinnedChainWarning,
    client_rounds,
    global_rounds,
    model_of_round,
    simulated_rounds,
    verified_chain,
)

__all__ = [
    "ChainModel",
    "ModelFileError",
    "UnpinnedChainWarning",
    "load_global_models",
    "load_model",
    "load_rounds",
    "read_model_file",
    "simulated_rounds",
]


def load_rounds(
    path: str | Path,
    *,
    min_difficulty: int = 0,
    server_key: str | None = None,
    known_servers: str | Path | None = None,
    allow_unsigned: bool = False,
) -> pd.DataFrame:
    """Verify the chain file PATH; return each client's model, one row per round and client
    (round, client, n_samples, block_hash, a column per weight, bias)."""
    chain = verified_chain(
        path,
        min_difficulty=min_difficulty,
        server_key=server_key,
        known_servers=known_servers,
        allow_unsigned=allow_unsigned,
    )
    return client_rounds(chain.blocks)


def load_global_models(
    path: str | Path,
    *,
    min_difficulty: int = 0,
    server_key: str | None = None,
    known_servers: str | Path | None = None,
    allow_unsigned: bool = False,
) -> pd.DataFrame:
    """Verify the chain file PATH; return its global model, one row per round from 0."""
    chain = verified_chain(
        path,
        min_difficulty=min_difficulty,
        server_key=server_key,
        known_servers=known_servers,
        allow_unsigned=allow_unsigned,
    )
    return global_rounds(chain.blocks)


def load_model(
    path: str | Path,
    *,
    round: int | None = None,
    target: str | None = None,
    min_difficulty: int = 0,
    server_key: str | None = None,
    known_servers: str | Path | None = None,
    allow_unsigned: bool = False,
) -> ChainModel:
    """Verify the chain file PATH; return the global model of ROUND (default: the last), of the
    target the chain records (TARGET, default 'charges', for a chain that records none;
    ValueError if TARGET differs from the recorded one)."""
    chain = verified_chain(
        path,
        min_difficulty=min_difficulty,
        server_key=server_key,
        known_servers=known_servers,
        allow_unsigned=allow_unsigned,
    )
    return model_of_round(chain.blocks, round, target=target)


def read_model_file(path: str | Path) -> ChainModel:
    """The model in a file `blockchain.py export` wrote."""
    return model_from_json(Path(path).read_text(encoding="utf-8"))
