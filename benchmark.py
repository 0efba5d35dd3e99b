"""Print the project's speed and quality figures, each measured against a reference in this run.

`python benchmark.py` (about half a minute). Figures, not pass/fail: the machines are shared and
noisy, so every number that matters is a ratio of two measurements taken side by side.
"""

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from block import mine
from dataset import load_dataset
from local_training import LocalProblem, train_locally
from model import LinearModel, fit_lstsq, mse
from simulation import DEFAULT_ROUNDS, simulate

DATA = Path(__file__).resolve().parent / "data"
MINING_DIFFICULTY = 20  # about a million tries a block: long enough to time, short to wait for


def quality() -> None:
    datasets = {f"cli{i}": load_dataset(DATA / f"client{i}.csv") for i in (1, 2)}
    X = np.vstack([d.X for d in datasets.values()])
    y = np.concatenate([d.y for d in datasets.values()])
    reference = mse(fit_lstsq(X, y), X, y)
    started = time.perf_counter()
    history = simulate(datasets)
    elapsed = time.perf_counter() - started
    print(f"quality: pooled-rows MSE of the global model / lstsq MSE, {DEFAULT_ROUNDS} rounds")
    for r in history:
        print(f"  round {r.index}: {mse(r.global_model, X, y) / reference:.6f}")
    per_client_round = elapsed / (len(history) * len(datasets))
    print(f"  GA time per client-round: {per_client_round * 1000:.0f} ms (default settings)")


def training_cost_by_rows() -> None:
    data = load_dataset(DATA / "client1.csv")
    start = LinearModel.zeros(data.X.shape[1])
    problems = {
        copies: LocalProblem.from_data(np.tile(data.X, (copies, 1)), np.tile(data.y, copies))
        for copies in (1, 100)
    }
    samples = {copies: [] for copies in problems}
    for _ in range(5):  # interleaved, so a noisy neighbour hurts both sides alike
        for copies, problem in problems.items():
            started = time.perf_counter()
            train_locally(problem, start, seed=1)
            samples[copies].append(time.perf_counter() - started)
    times = {copies: statistics.median(s) for copies, s in samples.items()}
    print("training cost against rows (a generation is scored from the client's sums)")
    print(f"  {data.n_samples} rows: {times[1] * 1000:.0f} ms per client-round")
    print(f"  {100 * data.n_samples} rows: {times[100] * 1000:.0f} ms per client-round")
    print(f"  ratio 100x rows / 1x rows: {times[100] / times[1]:.2f}")


def mining_rate() -> None:
    digests = [os.urandom(32) for _ in range(5)]
    tries = 0
    started = time.perf_counter()
    for digest in digests:
        tries += mine(digest, MINING_DIFFICULTY)[0] + 1
    miner_rate = tries / (time.perf_counter() - started)
    messages = [os.urandom(64) for _ in range(1000)]
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for _ in range(max(1, tries // len(messages))):
        for message in messages:
            sha256(message).digest()
    raw_rate = max(1, tries // len(messages)) * len(messages) / (time.perf_counter() - started)
    print("mining rate against raw hashlib.sha256 of 64-byte messages, same run")
    print(f"  miner: {miner_rate / 1e6:.2f} M hashes/s over {tries} tries")
    print(f"  raw sha256: {raw_rate / 1e6:.2f} M hashes/s")
    print(f"  ratio miner / raw: {miner_rate / raw_rate:.2f}")


SECTIONS = {"quality": quality, "rows": training_cost_by_rows, "mining": mining_rate}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    for name in args.sections or SECTIONS:
        SECTIONS[name]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
