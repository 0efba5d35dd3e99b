"""Redo the bundled split of insurance.csv: a held-out test set and two clients' halves.

Run from anywhere: `python data/split.py`. The same seed gives the same files, byte for byte.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 2017  # the year McMahan et al. named federated averaging; any fixed number would do
TEST_FRACTION = 0.2
HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    table = pd.read_csv(HERE / "insurance.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(SEED)
    n_test = round(TEST_FRACTION * len(table))
    test_rows = np.sort(rng.permutation(len(table))[:n_test])
    is_test = np.zeros(len(table), dtype=bool)
    is_test[test_rows] = True
    # The rest keeps its file order and is cut in halves, as the original gave client 1 the
    # first half of the rows and client 2 the second.
    rest = table[~is_test]
    half = len(rest) // 2
    parts = {"test.csv": table[is_test], "client1.csv": rest[:half], "client2.csv": rest[half:]}
    for name, part in parts.items():
        part.to_csv(HERE / name, index=False, lineterminator="\n")
        print(f"{name}: {len(part)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
