"""Redo the bundled split of insurance.csv: a held-out test set and two clients' halves.

Run from anywhere: `python data/split.py`. The same seed gives the same files, byte for byte.
`--clients N --out FOLDER` deals the same non-test rows to N clients instead, in file order or,
with `--sort-by COLUMN`, sorted by a column (non-IID: each client sees one range of it).
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 2017  # the year McMahan et al. named federated averaging; any fixed number would do
TEST_FRACTION = 0.2
HERE = Path(__file__).resolve().parent
BUNDLED_CLIENTS = 2
EXIT_OK = 0
EXIT_USAGE = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients",
        type=int,
        default=BUNDLED_CLIENTS,
        metavar="N",
        help=f"non-test rows dealt to N clients (default: {BUNDLED_CLIENTS}, the bundled halves)",
    )
    parser.add_argument(
        "--sort-by",
        metavar="COLUMN",
        help="sort the non-test rows by COLUMN first (stably), for a non-IID split",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FOLDER",
        help="write client1.csv … clientN.csv there (made if missing); needed for any split "
        "but the bundled one, which rewrites data/test.csv, client1.csv and client2.csv",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    table = pd.read_csv(HERE / "insurance.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(SEED)
    n_test = round(TEST_FRACTION * len(table))
    test_rows = np.sort(rng.permutation(len(table))[:n_test])
    is_test = np.zeros(len(table), dtype=bool)
    is_test[test_rows] = True
    rest = table[~is_test]
    if args.clients == BUNDLED_CLIENTS and args.sort_by is None and args.out is None:
        # The bundled split keeps the rest in file order cut in halves, as the original gave
        # client 1 the first half of the rows and client 2 the second.
        half = len(rest) // 2
        parts = {"test.csv": table[is_test], "client1.csv": rest[:half], "client2.csv": rest[half:]}
        return write(parts, HERE)
    try:
        parts = deal(rest, n_clients=args.clients, sort_by=args.sort_by)
        if args.out is None or args.out.resolve() == HERE:
            raise ValueError(
                "--out FOLDER: this split goes to a folder of its own, not over the bundled files"
            )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        return write(parts, args.out)
    except OSError as error:
        print(f"error: --out {args.out}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE


def deal(rows: pd.DataFrame, *, n_clients: int, sort_by: str | None) -> dict[str, pd.DataFrame]:
    """ROWS in N_CLIENTS consecutive shards of near-equal size, named client1.csv, …, sorted by
    the column SORT_BY first if given: as fedchain.learning.partition's split_rows and
    split_sorted deal them, with each cell's text kept as the file has it."""
    # Two rows each at least: a client refuses a file of one row (a line needs two points).
    if not 1 <= n_clients <= len(rows) // 2:
        raise ValueError(
            f"--clients must be 1 to {len(rows) // 2} (two of the {len(rows)} non-test rows "
            f"each at least), not {n_clients}"
        )
    if sort_by is not None:
        if sort_by not in rows.columns:
            raise ValueError(
                f"--sort-by: no column {sort_by!r} (columns: {', '.join(rows.columns)})"
            )
        rows = rows.iloc[np.argsort(rows[sort_by].astype(float).to_numpy(), kind="stable")]
    shards = np.array_split(np.arange(len(rows)), n_clients)
    return {f"client{i + 1}.csv": rows.iloc[shard] for i, shard in enumerate(shards)}


def write(parts: dict[str, pd.DataFrame], folder: Path) -> int:
    for name, part in parts.items():
        part.to_csv(folder / name, index=False, lineterminator="\n")
        print(f"{folder / name if folder != HERE else name}: {len(part)} rows")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
