"""A private client's one release of its sums, kept on disk and reused: a client restarted in the
middle of a run, or taking part in the next run with the same schema, trains on the same noisy
sums and spends no more privacy. New rows, a new budget or other bounds need a new release, and
that is the user's decision: a client keeps one file, never replaced by the program, so a server
cannot buy a second release by sending another schema.
"""

import hashlib
import json
import os
import secrets
from pathlib import Path

import numpy as np

from fedchain.files import create_whole
from fedchain.learning.dataset import DataError, Dataset
from fedchain.learning.moments import Moments
from fedchain.learning.privacy import Guarantee, PrivateRelease, release
from fedchain.learning.schema import Schema, parse_schema

_KEYS = {
    "mechanism",
    "epsilon",
    "delta",
    "schema",
    "rows",
    "columns",
    "n_samples",
    "ridge",
    "clipped",
    "sums",
}


def release_path(folder: Path, name: str) -> Path:
    """Where NAME keeps its one release, whatever the schema: one file per client, not per
    schema, or each schema a server sent would buy it another release of the same rows."""
    return folder / f"{name}-release.json"


def rows_digest(data: Dataset) -> str:
    """SHA-256 of the rows and their columns' names: what a release was made from."""
    digest = hashlib.sha256(json.dumps(list(data.feature_names)).encode())
    digest.update(np.ascontiguousarray(data.X, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(data.y, dtype="<f8").tobytes())
    return digest.hexdigest()


def load_or_release(
    path: Path, data: Dataset, *, target: str, schema: Schema, epsilon: float, delta: float
) -> tuple[PrivateRelease, bool]:
    """The release kept in PATH, if it was made from DATA's rows with this budget; else a new
    one, kept there. Also whether it is new. Raises DataError naming what differs."""
    if path.exists():
        return _load(path, data, schema=schema, epsilon=epsilon, delta=delta), False
    low, high = schema.ranges(data.feature_names, target)
    # The noise must be secret: the run's seed is known to the server.
    rng = np.random.default_rng(secrets.randbits(128))
    made = release(data.X, data.y, low, high, epsilon=epsilon, delta=delta, rng=rng)
    record = {
        "mechanism": made.guarantee.mechanism,
        "epsilon": epsilon,
        "delta": delta,
        "schema": schema.canonical(),
        "rows": rows_digest(data),
        "columns": list(data.feature_names),
        "n_samples": made.n_samples,
        "ridge": made.ridge,
        "clipped": made.clipped,
        "sums": made.moments.gram.tolist(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(create_whole(path, json.dumps(record).encode(), mode=0o600))
    return made, True


def _load(
    path: Path, data: Dataset, *, schema: Schema, epsilon: float, delta: float
) -> PrivateRelease:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or set(record) != _KEYS:
            raise ValueError("not a release file")
        guarantee = Guarantee(record["epsilon"], record["delta"], record["mechanism"])
        moments = Moments(np.array(record["sums"], dtype=np.float64))
        columns = tuple(record["columns"])
        released_under = parse_schema(record["schema"], source="its schema")
        if type(record["n_samples"]) is not int or record["n_samples"] < 1:
            raise ValueError("its count of rows is not a positive whole number")
    except (ValueError, TypeError, KeyError) as error:
        raise DataError(f"{path}: cannot read this client's release: {error}") from None
    redo = f"; a new release would spend privacy again: remove {path} to make one"
    # The bounds, not the text: the same bounds listed in another order are the same release.
    if released_under.bounds != schema.bounds:
        raise DataError(
            f"this client released its rows' sums under another schema than the "
            f"server's (kept in {path}){redo}"
        )
    if (guarantee.epsilon, guarantee.delta) != (epsilon, delta):
        raise DataError(
            f"this client released its rows' sums under this schema at ε {guarantee.epsilon:g}, "
            f"δ {guarantee.delta:g}, not ε {epsilon:g}, δ {delta:g} (kept in {path}){redo}"
        )
    if (
        set(columns) != set(data.feature_names)
        or rows_digest(data.in_order(columns)) != record["rows"]
    ):
        raise DataError(
            f"the rows changed since this client released their sums under this "
            f"schema (kept in {path}){redo}"
        )
    return PrivateRelease(
        moments=in_order(moments, columns, data.feature_names),
        n_samples=record["n_samples"],
        ridge=record["ridge"],
        clipped=record["clipped"],
        guarantee=guarantee,
    )


def in_order(moments: Moments, columns: tuple[str, ...], wanted: tuple[str, ...]) -> Moments:
    """MOMENTS of COLUMNS with the features in WANTED's order (the intercept and y stay last)."""
    d = len(columns)
    order = [columns.index(name) for name in wanted] + [d, d + 1]
    return Moments(moments.gram[np.ix_(order, order)])
