"""A verified chain as tables: each client's model and the global model, round by round, their
errors on held-out rows, and the server's metrics file checked against the chain."""

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from fedchain import settings
from fedchain.learning.aggregation import FEDAVG
from fedchain.learning.dataset import Dataset, load_dataset
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.learning.simulation import simulate
from fedchain.ledger.block import Block
from fedchain.ledger.chain import Chain, PinHints, check_server_key, verify_chain
from fedchain.ledger.store import load_chain
from fedchain.results.chain_model import ChainModel
from fedchain.results.target import chain_target

METRICS_COLUMNS = ("round", "client", "local_mse_after", "test_mse", "block_hash")
MIN_HASH_PREFIX = 8  # hex digits of a block's hash the metrics file must give, at the least


PYTHON_HINTS = PinHints("server_key=HEX or known_servers=FILE", "allow_unsigned=True")


class MetricsError(ValueError):
    """A metrics file that cannot be read, or that does not describe the chain it is given with."""


class UnpinnedChainWarning(UserWarning):
    """A chain read with no server key pinned: whoever holds any key could have made it."""


def verified_chain(
    path: str | Path,
    *,
    min_difficulty: int = 0,
    server_key: str | None = None,
    known_servers: str | Path | None = None,
    allow_unsigned: bool = False,
) -> Chain:
    """The chain in the file PATH, verified and signed by SERVER_KEY (or a key the KNOWN_SERVERS
    file records); with neither, an UnpinnedChainWarning says anyone could have made it, and an
    unsigned chain is refused unless ALLOW_UNSIGNED. Raises OSError, ChainFileError, ChainError
    (UntrustedChain for a refusal) or TrustError (a bad known-servers file)."""
    chain = verify_chain(load_chain(path).blocks, min_difficulty=min_difficulty)
    caveat = check_server_key(
        chain,
        server_key=server_key,
        known_servers=known_servers,
        allow_unsigned=allow_unsigned,
        hints=PYTHON_HINTS,
    )
    if caveat is not None:
        # stacklevel 3: the line that called load_rounds (or another load_*), not this one.
        warnings.warn(f"{path}: {caveat}", UnpinnedChainWarning, stacklevel=3)
    return chain


def last_round(blocks: Sequence[Block]) -> int:
    """The chain's last round: round N's model is block N's, and a closing block only repeats
    the last round's model."""
    return max(block.index for block in blocks if block.cli or block.index == 0)


def model_of_round(
    blocks: Sequence[Block], round: int | None = None, *, target: str | None = None
) -> ChainModel:
    """The global model of ROUND (default: the last) of the verified BLOCKS, predicting the
    target the chain records (or TARGET, default the bundled one, for a chain that records
    none); ValueError if the chain has no such round, or records another target than TARGET."""
    column, unit = chain_target(blocks[0], target)
    last = last_round(blocks)
    index = last if round is None else round
    if not 0 <= index <= last:
        raise ValueError(f"the chain has rounds 0..{last}, not {index}")
    block = blocks[index]
    return ChainModel(
        block.server_model,
        block.feature_names,
        target=column,
        unit=unit,
        round=index,
        block_hash=block.hash,
        genesis_hash=blocks[0].hash,
    )


def client_rounds(blocks: Sequence[Block]) -> pd.DataFrame:
    """One row per round and client: round, client, n_samples, block_hash, a column per weight,
    bias."""
    features = list(blocks[0].feature_names)
    rows = [
        [block.index, name, update.n_samples, block.hash, *_model_row(update.model)]
        for block in blocks[1 : last_round(blocks) + 1]
        for name, update in ((name, block.client_model[name]) for name in block.cli)
    ]
    columns = ["round", "client", "n_samples", "block_hash", *features, "bias"]
    return pd.DataFrame(rows, columns=columns)


def global_rounds(blocks: Sequence[Block]) -> pd.DataFrame:
    """One row per round, round 0 (the starting model) included: round, block_hash, a column per
    weight, bias."""
    features = list(blocks[0].feature_names)
    rows = [
        [b.index, b.hash, *_model_row(b.server_model)] for b in blocks[: last_round(blocks) + 1]
    ]
    return pd.DataFrame(rows, columns=["round", "block_hash", *features, "bias"])


def simulated_rounds(
    datasets: Mapping[str, Dataset] | None = None,
    *,
    rounds: int = settings.ROUNDS,
    run_seed: int = settings.RUN_SEED,
    aggregation: str = FEDAVG,
    parameters: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Run the federation in this process (no sockets, no chain) and return client_rounds'
    table without block_hash. By default the clients are the bundled cli1 and cli2, and the
    rule FedAvg (any rule server.py takes, with its parameters)."""
    if datasets is None:
        test = load_dataset(settings.bundled_data("test.csv"))
        datasets = {
            name: load_dataset(settings.bundled_data(f"client{i}.csv")).in_order(test.feature_names)
            for i, name in enumerate(("cli1", "cli2"), start=1)
        }
    features = list(next(iter(datasets.values())).feature_names)
    played_rounds = simulate(
        datasets, rounds=rounds, run_seed=run_seed, aggregation=aggregation, parameters=parameters
    )
    rows = [
        [played.index, name, datasets[name].n_samples, *_model_row(model)]
        for played in played_rounds
        for name, model in played.client_models.items()
    ]
    return pd.DataFrame(rows, columns=["round", "client", "n_samples", *features, "bias"])


def errors_on(blocks: Sequence[Block], test: Dataset) -> pd.DataFrame:
    """The MSE on TEST's rows (in the chain's column order) of every model on the chain: one row
    per round and model, model being a client's name or None for the global model."""
    rows = [
        (block.index, None, mse(block.server_model, test.X, test.y))
        for block in blocks[: last_round(blocks) + 1]
    ]
    rows += [
        (block.index, name, mse(block.client_model[name].model, test.X, test.y))
        for block in blocks[1 : last_round(blocks) + 1]
        for name in block.cli
    ]
    return pd.DataFrame(rows, columns=["round", "model", "mse"])


def read_metrics(path: str | Path, blocks: Sequence[Block]) -> pd.DataFrame:
    """The server's metrics file PATH (one row per round and client), refused unless every row's
    round, client and block hash are the verified BLOCKS' own."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"client": str, "block_hash": str})
    except FileNotFoundError:
        raise MetricsError(f"{path}: no such metrics file") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise MetricsError(f"{path}: not a readable CSV file ({error})") from None
    if missing := [c for c in METRICS_COLUMNS if c not in table.columns]:
        raise MetricsError(f"{path}: no column(s) {', '.join(missing)}")
    if table.empty:
        raise MetricsError(f"{path}: the file has a header but no rows")
    for column in ("round", "local_mse_after", "test_mse"):
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise MetricsError(f"{path}: column {column!r} holds something other than numbers")
    last = last_round(blocks)
    for line, row in zip(range(2, len(table) + 2), table.itertuples(index=False), strict=True):
        where = f"{path}: line {line}"
        index = row.round
        if not (float(index).is_integer() and 1 <= index <= last):
            raise MetricsError(f"{where}: round {index} is not a round of the chain (1..{last})")
        block = blocks[int(index)]
        given = str(row.block_hash)
        if len(given) < MIN_HASH_PREFIX or not block.hash.startswith(given):
            raise MetricsError(
                f"{where}: block hash {given[:16]!r} is not round {int(index)}'s on the chain "
                f"({block.hash[:16]}…): the file belongs to another run"
            )
        if row.client not in block.cli:
            raise MetricsError(f"{where}: {row.client!r} has no model in round {int(index)}")
    return table.astype({"round": int})


def _model_row(model: LinearModel) -> list[float]:
    return [*(float(w) for w in model.weights), model.bias]
