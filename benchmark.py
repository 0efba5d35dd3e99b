"""Print the project's speed and quality figures, each measured against a reference in this run.

`python benchmark.py [quality|rows|mining|network]` (all of them: about half a minute).
Figures, not pass/fail: the machines are shared and noisy, so every number that matters is a
ratio of two measurements taken side by side.
"""

import argparse
import hashlib
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.cli.programs import start_client, start_server
from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse
from fedchain.learning.local_training import LocalProblem, train_locally
from fedchain.learning.simulation import simulate
from fedchain.ledger.mining import mine
from fedchain.ledger.signatures import signature_holds
from fedchain.trust.cost import handshake_cost_ms
from fedchain.trust.keys import public_hex, sign

HERE = Path(__file__).resolve().parent
ROUND_LINE = re.compile(r"^round \d+ \|")
MINING_DIFFICULTY = 18  # about 260,000 tries a block: long enough to time, short to wait for


def quality() -> None:
    datasets = {f"cli{i}": load_dataset(settings.bundled_data(f"client{i}.csv")) for i in (1, 2)}
    X = np.vstack([d.X for d in datasets.values()])
    y = np.concatenate([d.y for d in datasets.values()])
    reference = mse(fit_lstsq(X, y), X, y)
    started = time.perf_counter()
    history = simulate(datasets)
    elapsed = time.perf_counter() - started
    print(f"quality: pooled-rows MSE of the global model / lstsq MSE, {settings.ROUNDS} rounds")
    for r in history:
        print(f"  round {r.index}: {mse(r.global_model, X, y) / reference:.6f}")
    per_client_round = elapsed / (len(history) * len(datasets))
    print(f"  GA time per client-round: {per_client_round * 1000:.0f} ms (default settings)")


def training_cost_by_rows() -> None:
    data = load_dataset(settings.bundled_data("client1.csv"))
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


def mining_rate(repeats: int = 9) -> None:
    messages = [os.urandom(64) for _ in range(1000)]
    sha256 = hashlib.sha256
    ratios, miner_rates, raw_rates = [], [], []
    for _ in range(repeats):  # interleaved, so a noisy neighbour hurts both sides alike
        started = time.perf_counter()
        tries = mine(os.urandom(32), MINING_DIFFICULTY)[0] + 1
        miner_rates.append(tries / (time.perf_counter() - started))
        batches = max(1, tries // len(messages))
        started = time.perf_counter()
        for _ in range(batches):
            for message in messages:
                sha256(message).digest()
        raw_rates.append(batches * len(messages) / (time.perf_counter() - started))
        ratios.append(miner_rates[-1] / raw_rates[-1])
    print("mining rate against raw hashlib.sha256 of 64-byte messages, interleaved in one run")
    print(f"  miner: {statistics.median(miner_rates) / 1e6:.2f} M hashes/s (median of {repeats})")
    print(f"  raw sha256: {statistics.median(raw_rates) / 1e6:.2f} M hashes/s")
    print(f"  ratio miner / raw: median {statistics.median(ratios):.2f}, "
          f"range {min(ratios):.2f}..{max(ratios):.2f}")  # fmt: skip


def network_overhead(rounds: int = 8) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        chain = Path(scratch) / "chain.jsonl"
        server, port, _ = start_server(
            "--port", "0", "--rounds", str(rounds), "--chain", str(chain), cwd=HERE
        )
        clients = []
        try:
            for i in (1, 2):
                replica = str(Path(scratch) / f"cli{i}.jsonl")
                data = settings.bundled_data(f"client{i}.csv")
                clients.append(
                    start_client(
                        f"cli{i}", data, "--port", str(port), "--replica", replica, cwd=HERE
                    )
                )
            output, _ = server.communicate(timeout=300)
        finally:
            for process in [server, *clients]:
                process.kill()
                process.communicate()
    overheads, round_times = [], []
    for line in output.splitlines():
        if not ROUND_LINE.match(line):
            continue
        trained = [float(ms) for ms in re.findall(r"trained in ([\d.]+) ms", line)]
        mined = float(re.search(r"mined in ([\d.]+) ms", line).group(1))
        round_ms = float(re.search(r"\| round ([\d.]+) ms", line).group(1))
        overheads.append(round_ms - max(trained) - mined)
        round_times.append(round_ms)
    if len(overheads) != rounds:
        print(f"network overhead: the run did not finish; the server said:\n{output}")
        return
    print("networked run, 2 clients: round wall time - slowest client's training - mining")
    print(f"  per round: {', '.join(f'{ms:.1f}' for ms in overheads)} ms")
    print(f"  median overhead: {statistics.median(overheads):.1f} ms of a median round of "
          f"{statistics.median(round_times):.1f} ms")  # fmt: skip


def trust_cost(repeats: int = 2000, rounds: int = settings.ROUNDS) -> None:
    """What signing, checking and TLS add to a round, per client, in a run of two clients."""
    client_key, server_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    client_hex = public_hex(client_key)
    signing, checking = [], []
    for i in range(repeats):  # interleaved, so a noisy neighbour hurts both alike
        message = i.to_bytes(8, "big") + bytes(400)  # an update is a few hundred bytes
        started = time.perf_counter()
        sign(server_key, message)
        signing.append(time.perf_counter() - started)
        signature = sign(client_key, message).hex()  # not through sign_hex: nothing remembered
        started = time.perf_counter()
        signature_holds(client_hex, signature, message)
        checking.append(time.perf_counter() - started)
    sign_s, check_s = statistics.median(signing), statistics.median(checking)
    n = 2
    # A client signs its update and its attestation, and checks the new block's server
    # signature and the others' updates and attestations (its own it remembers signing). The
    # server checks each update and attestation as it arrives and signs the block; appending
    # the block checks nothing anew (signatures.py remembers what held and what it signed).
    client_s = 2 * sign_s + (1 + 2 * (n - 1)) * check_s
    server_s = 2 * n * check_s + sign_s
    handshake_s = handshake_cost_ms(50) / 1000
    per_client_round_s = client_s + server_s / n + handshake_s / rounds
    print(f"trust: signing and TLS per client per round ({n} clients, {rounds} rounds)")
    print(f"  one Ed25519 signature: {sign_s * 1e3:.3f} ms, one check: {check_s * 1e3:.3f} ms")
    print(f"  signatures: client {client_s * 1e3:.2f} ms + server {server_s / n * 1e3:.2f} ms")
    print(f"  TLS 1.3 handshake, once a run: {handshake_s * 1e3:.2f} ms "
          f"({handshake_s / rounds * 1e3:.2f} ms a round over {rounds} rounds)")  # fmt: skip
    print(f"  added per client per round: {per_client_round_s * 1e3:.2f} ms (goal: under 2 ms)")


SECTIONS = {
    "quality": quality,
    "rows": training_cost_by_rows,
    "mining": mining_rate,
    "network": network_overhead,
    "trust": trust_cost,
}


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
