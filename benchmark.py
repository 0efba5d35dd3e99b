"""Print the project's speed and quality figures, each measured against a reference in this run.

`python benchmark.py [--write PAGE]
[quality|noniid|poisoning|privacy|speed|csv|rows|mining|network|trust|clients|flower]`
(all: a few minutes).
Figures, not pass/fail: the machines are shared and noisy, so every number that matters is a
ratio of two measurements taken side by side. With --write, each section's output also replaces
its block in a Markdown page (docs/benchmarks.md), stamped with the date and the machine.
"""

import argparse
import contextlib
import functools
import hashlib
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.cli.programs import start_client, start_server
from fedchain.learning.aggregation import (
    BYZANTINE,
    FEDAVG,
    KRUM,
    MEDIAN,
    SCAFFOLD,
    TRIMMED_MEAN,
    feature_scale,
)
from fedchain.learning.dataset import Dataset, load_dataset, save_dataset
from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse
from fedchain.learning.local_training import LocalProblem, train_locally
from fedchain.learning.partition import pool, split_by_value, split_rows, split_sorted
from fedchain.learning.poisoning import parse_poison
from fedchain.learning.privacy import PrivateRelease, release
from fedchain.learning.schema import Schema, load_schema
from fedchain.learning.simulation import SimulatedRound, simulate
from fedchain.learning.synthetic import TARGET as SYNTHETIC_TARGET
from fedchain.learning.synthetic import synthetic_dataset, synthetic_schema
from fedchain.ledger.mining import mine
from fedchain.ledger.signatures import signature_holds
from fedchain.ledger.store import load_chain
from fedchain.trust.cost import handshake_cost_ms
from fedchain.trust.keys import public_hex, sign

HERE = Path(__file__).resolve().parent
MINING_DIFFICULTY = 18  # about 260,000 tries a block: long enough to time, short to wait for
MANY_CLIENTS = (2, 8, 32)
MANY_CLIENTS_DIFFICULTY = 8  # the same for every size; mining is left out of the own time anyway
FLOWER_MANY_CLIENTS = 100
RUN_WATCHDOG_S = 600.0  # 33 processes starting on two shared cores take a while; a hang does not


@dataclass(frozen=True)
class Case:
    label: str
    rounds: int
    goal: float  # the final round's quality, at most
    clients: Callable[[], dict[str, Dataset]]


def bundled() -> dict[str, Dataset]:
    return {f"cli{i}": load_dataset(settings.bundled_data(f"client{i}.csv")) for i in (1, 2)}


def pooled(datasets: dict[str, Dataset]) -> Dataset:
    return pool(datasets.values())


CASES = {
    "bundled": Case("2 clients, the bundled rows", 5, 1.000093, bundled),
    "shards": Case(
        "32 clients, the bundled rows in file order",
        5,
        1.01,
        lambda: split_rows(pooled(bundled()), 32),
    ),
    "wide": Case(
        "2 clients, 20,000 synthetic rows, 200 features",
        5,
        1.001,
        lambda: split_rows(synthetic_dataset(20_000, 200), 2),
    ),
    "wider": Case(
        "2 clients, 20,000 synthetic rows, 1,000 features",
        10,
        1.001,
        lambda: split_rows(synthetic_dataset(20_000, 1000), 2),
    ),
}


@functools.cache
def simulated(case_name: str) -> tuple[dict[str, Dataset], list[SimulatedRound], list[float]]:
    """The case's rows, its in-process run (default settings) and each round's quality: the
    pooled-rows MSE of the global model over that of numpy lstsq on the same rows."""
    case = CASES[case_name]
    datasets = case.clients()
    everything = pooled(datasets)
    reference = mse(fit_lstsq(everything.X, everything.y), everything.X, everything.y)
    warm_up()
    history = simulate(datasets, rounds=case.rounds)
    ratios = [mse(r.global_model, everything.X, everything.y) / reference for r in history]
    return datasets, history, ratios


@functools.cache
def warm_up() -> None:
    # The first search in a process pays for code paths not yet touched; no client does twice.
    X = np.random.default_rng(0).normal(size=(50, 3))
    train_locally(LocalProblem.from_data(X, X.sum(axis=1)), LinearModel.zeros(3), seed=0)


def quality() -> None:
    print("quality: pooled-rows MSE of the global model / MSE of numpy lstsq on the same rows")
    print(f"  {'case':50}{'rounds':>7}{'final':>10}{'goal':>12}   at goal")
    for name, case in CASES.items():
        ratios = simulated(name)[2]
        met = [ratio <= case.goal for ratio in ratios]
        # The first round from which every later one meets the goal too.
        since = next((i + 1 for i in range(len(met)) if all(met[i:])), None)
        at_goal = f"from round {since}" if since else "NOT MET"
        print(
            f"  {case.label:50}{case.rounds:>7}{ratios[-1]:>10.6f}{'<= ' + str(case.goal):>12}"
            f"   {at_goal}"
        )
    for name in ("bundled", "wider"):
        rounds = " ".join(f"{ratio:.6f}" for ratio in simulated(name)[2])
        print(f"  by round, {CASES[name].label}: {rounds}")
    same = networked_equals_simulated("shards")
    print(
        f"  the 32-client run as 33 real processes gives the same global models, bit for bit: "
        f"{'yes' if same else 'NO'}"
    )


def networked_equals_simulated(case_name: str) -> bool:
    """Run the case with a real server and one real process per client; compare every round."""
    datasets, history, _ = simulated(case_name)
    with tempfile.TemporaryDirectory() as scratch:
        chain = Path(scratch) / "chain.jsonl"
        server, port, first = start_server(
            "--port",
            "0",
            "--clients",
            str(len(datasets)),
            "--rounds",
            str(len(history)),
            "--difficulty",
            "8",
            "--chain",
            str(chain),
            cwd=Path(scratch),
        )
        clients = []
        try:
            for name, data in datasets.items():
                rows, replica = Path(scratch) / f"{name}.csv", Path(scratch) / f"{name}.jsonl"
                save_dataset(data, rows)
                flags = ("--port", str(port), "--replica", str(replica))
                clients.append(start_client(name, rows, *flags, cwd=Path(scratch)))
            output, _ = server.communicate(timeout=600)
        finally:
            for process in [server, *clients]:
                process.kill()
                process.communicate()
        if server.returncode != 0:
            print(f"  the networked run failed; the server said:\n{first}{output}")
            return False
        rounds = [block for block in load_chain(chain).blocks if block.cli]
    return [b.server_model for b in rounds] == [r.global_model for r in history]


def speed() -> None:
    print("time per client-round (in-process runs of the quality cases, default settings),")
    print("against an exact local solve of the same client's problem")
    for name, label in (("bundled", "12"), ("wide", "200"), ("wider", "1,000")):
        datasets, history, _ = simulated(name)
        times = [(s, r.index) for r in history for s in r.train_s.values()]
        slowest, slowest_round = max(times)
        median = statistics.median(s for s, _ in times)
        data = next(iter(datasets.values()))
        repeats = 1 if data.X.shape[1] > 500 else 5
        lstsq_s = best_time(lambda d=data: fit_lstsq(d.X, d.y), repeats)
        # The physical limit: the client already holds its sums; one solve of them is exact.
        A = np.hstack([data.X - data.X.mean(axis=0), np.ones((data.n_samples, 1))])
        gram, moment = A.T @ A, A.T @ data.y
        solve_s = best_time(lambda g=gram, m=moment: np.linalg.solve(g, m), 5)
        print(
            f"  {label:>5} features: median {median * 1000:7.1f} ms, slowest "
            f"{slowest * 1000:7.1f} ms (round {slowest_round}), {len(times)} client-rounds; "
            f"median / lstsq on the rows {median / lstsq_s:.2g}, "
            f"/ a solve from the sums {median / solve_s:.3g}"
        )
    print("  goals: <= 40 ms at 12 features, <= 1 s at 1,000")


def best_time(work: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return min(samples)


def csv_loading(n_rows: int = 10_000, n_columns: int = 1000) -> None:
    data = synthetic_dataset(n_rows, n_columns - 1)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "rows.csv"
        save_dataset(data, path, target=SYNTHETIC_TARGET, significant_digits=6)
        size_mb = path.stat().st_size / 1e6
        samples = []
        for _ in range(3):
            started = time.perf_counter()
            load_dataset(path, target=SYNTHETIC_TARGET)
            samples.append(time.perf_counter() - started)
    print(
        f"loading {n_rows:,} x {n_columns:,} CSV cells ({size_mb:.0f} MB, 6 significant "
        f"digits) with load_dataset: median {statistics.median(samples):.2f} s of 3 "
        "(goal <= 1 s)"
    )


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
    print(
        f"  ratio miner / raw: median {statistics.median(ratios):.2f}, "
        f"range {min(ratios):.2f}..{max(ratios):.2f}"
    )


def network_overhead(rounds: int = 8) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        chain = Path(scratch) / "chain.jsonl"
        server, port, _ = start_server(
            "--port", "0", "--rounds", str(rounds), "--chain", str(chain), cwd=Path(scratch)
        )
        clients = []
        try:
            for i in (1, 2):
                replica = str(Path(scratch) / f"cli{i}.jsonl")
                data = settings.bundled_data(f"client{i}.csv")
                clients.append(
                    start_client(
                        f"cli{i}",
                        data,
                        "--port",
                        str(port),
                        "--replica",
                        replica,
                        cwd=Path(scratch),
                    )
                )
            output, _ = server.communicate(timeout=300)
            per_round = read_metrics(chain.with_name("chain.metrics.csv"))
        finally:
            for process in [server, *clients]:
                process.kill()
                process.communicate()
    # Round wall time less the slowest client's training and the mining: what the network,
    # TLS, signatures and the server's checks add.
    overheads = list(1000 * (per_round["round_s"] - per_round["train_s"] - per_round["mining_s"]))
    round_times = list(1000 * per_round["round_s"])
    if len(overheads) != rounds:
        print(f"network overhead: the run did not finish; the server said:\n{output}")
        return
    print("networked run, 2 clients: round wall time - slowest client's training - mining")
    print(f"  per round: {', '.join(f'{ms:.1f}' for ms in overheads)} ms")
    print(
        f"  median overhead: {statistics.median(overheads):.1f} ms of a median round of "
        f"{statistics.median(round_times):.1f} ms"
    )


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
    print(
        f"  TLS 1.3 handshake, once a run: {handshake_s * 1e3:.2f} ms "
        f"({handshake_s / rounds * 1e3:.2f} ms a round over {rounds} rounds)"
    )
    print(f"  added per client per round: {per_client_round_s * 1e3:.2f} ms (goal: under 2 ms)")


@dataclass(frozen=True)
class ServerRun:
    exit_code: int
    round_ms: list[float]  # each round's wall time, as the server timed it
    own_ms: list[float]  # the server's CPU time in each round, mining left out
    peak_bytes: int  # the server process's peak resident memory
    output: str


def many_clients(sizes: Sequence[int] = MANY_CLIENTS, rounds: int = settings.ROUNDS) -> None:
    """The server's own time and memory for runs of SIZES real client processes each."""
    everything = pooled(bundled())
    runs = {n: run_server_with_clients(split_rows(everything, n), rounds) for n in sizes}
    for n, run in runs.items():
        if run.exit_code != 0 or len(run.own_ms) != rounds:
            print(
                f"many clients: the {n}-client run failed (exit {run.exit_code}); "
                f"the server said:\n{run.output}"
            )
            return
    print(
        f"many clients: the server in a {rounds}-round run of N client processes on the bundled "
        f"rows (split in file order), difficulty {MANY_CLIENTS_DIFFICULTY} bits for all"
    )
    print("  own: the server's CPU time in the round (checking, averaging, writing, sending),")
    print("  as its round line gives it: not waiting for peers or for a core, not mining")
    print(
        f"  {'clients':>7}{'round ms':>10}{'own ms':>9}{'own/client':>12}{'peak memory':>14}"
        "   (medians of the rounds)"
    )
    for n, run in runs.items():
        own = statistics.median(run.own_ms)
        print(
            f"  {n:>7}{statistics.median(run.round_ms):>10.1f}{own:>9.2f}{own / n:>12.3f}"
            f"{run.peak_bytes / 2**20:>11.1f} MB"
        )
    for n, run in runs.items():
        by_round = ", ".join(
            f"{r:.0f}/{o:.1f}" for r, o in zip(run.round_ms, run.own_ms, strict=True)
        )
        print(f"  by round, {n} clients, round ms/own ms: {by_round}")
    fewest, most = min(sizes), max(sizes)
    linear = most / fewest
    ratio = statistics.median(runs[most].own_ms) / statistics.median(runs[fewest].own_ms)
    verdict = "no faster than linearly" if ratio <= linear else "FASTER than linearly"
    print(
        f"  own time, {most} clients / {fewest}: {ratio:.1f} (linear: {linear:g}): "
        f"the server's own time grows {verdict} in the number of clients"
    )


def flower_cost(rounds: int = settings.ROUNDS, many: int = FLOWER_MANY_CLIENTS) -> None:
    """One run on the bundled rows three ways, side by side: the socket scripts, Flower's
    simulation and Flower deployed on loopback (TLS, SuperNode authentication); then a Flower
    simulation of MANY clients: its chain's size, verify's time and the server's memory."""
    # The deployment's set-up (certificates, a SuperLink, SuperNodes) is the tests' own.
    sys.path.insert(0, str(HERE / "tests"))
    from flower_certificates import make_node_key
    from flower_deployment import deployment

    from fedchain.ledger.chain import verify_chain

    walls: dict[str, float] = {}
    started = time.perf_counter()
    socket_run = run_server_with_clients(bundled(), rounds)
    walls["socket scripts (3 processes)"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        simulated = flower_simulation(folder / "sim", rounds, clients=2)
        walls["Flower simulation (Ray)"] = simulated.wall_s
        with deployment(folder / "deployed") as flower:
            began = time.perf_counter()
            keys = {n: make_node_key(folder / "node-keys", n) for n in ("cli1", "cli2")}
            flower.register(*(public for _, public in keys.values()))
            flower.start_supernodes(
                {
                    name: (
                        {"name": name, "data": str(settings.bundled_data(f"client{i}.csv"))},
                        keys[name][0],
                    )
                    for i, name in ((1, "cli1"), (2, "cli2"))
                }
            )
            set_up_s = time.perf_counter() - began
            began = time.perf_counter()
            run = folder / "deployed-run"
            done = flower.run(
                HERE,
                {
                    "rounds": rounds,
                    "difficulty": MANY_CLIENTS_DIFFICULTY,
                    "chain": run / "chain.jsonl",
                    "key": run / "keys" / "server.key",
                    "keys": run / "keys",
                    "replicas": run / "replicas",
                    "test": settings.bundled_data("test.csv"),
                },
            )
            walls["Flower deployed (SuperLink + 2 SuperNodes)"] = time.perf_counter() - began
        many_run = flower_simulation(folder / "many", rounds, clients=many)
        blocks = load_chain(many_run.chain).blocks
        verify_s = best_time(lambda: verify_chain(load_chain(many_run.chain).blocks), 3)
        chain_bytes = many_run.chain.stat().st_size
    failed = [
        label
        for label, ok in (
            ("socket", socket_run.exit_code == 0),
            ("simulation", simulated.exit_code == 0),
            ("deployment", done.returncode == 0),
            (f"{many} clients", many_run.exit_code == 0 and len(blocks) == rounds + 2),
        )
        if not ok
    ]
    if failed:
        print(f"flower: the {', '.join(failed)} run failed:\n{done.stdout}{done.stderr}")
        return
    print(
        f"flower: wall time of a {rounds}-round run on the bundled rows, 2 clients, difficulty "
        f"{MANY_CLIENTS_DIFFICULTY} bits, each from its start to its chain's last block"
    )
    socket_s = walls["socket scripts (3 processes)"]
    for label, wall_s in walls.items():
        print(f"  {label:<44}{wall_s:>7.1f} s  {wall_s / socket_s:>5.1f} x the scripts'")
    print(f"  (the deployment's set-up before it, certificates aside: {set_up_s:.1f} s)")
    print(
        f"  {many} clients in Flower's simulation, the bundled rows split evenly: "
        f"{many_run.wall_s:.1f} s; chain {chain_bytes / 1024:.0f} KiB, {len(blocks)} blocks; "
        f"verify {verify_s * 1000:.0f} ms; the server's process (the ServerApp, Ray's driver) "
        f"peaked at {many_run.peak_bytes / 2**20:.0f} MB"
    )


@dataclass(frozen=True)
class FlowerTiming:
    exit_code: int
    wall_s: float
    chain: Path
    peak_bytes: int


def flower_simulation(folder: Path, rounds: int, *, clients: int) -> FlowerTiming:
    """`python -m fedchain.flower simulate` in FOLDER, timed, its memory followed."""
    chain = folder / "chain.jsonl"
    command = [
        sys.executable, "-m", "fedchain.flower", "simulate", "--rounds", str(rounds),
        "--difficulty", str(MANY_CLIENTS_DIFFICULTY), "--clients", str(clients),
        "--chain", str(chain), "--replicas", str(folder / "replicas"),
        "--keys", str(folder / "keys"),
    ]  # fmt: skip
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(HERE), "FLWR_TELEMETRY_ENABLED": "0"}
    began = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    memory = PeakMemory(process)
    try:
        exit_code = process.wait(timeout=RUN_WATCHDOG_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)  # whatever Ray left
    wall_s = time.perf_counter() - began
    memory.join()
    return FlowerTiming(exit_code, wall_s, chain, memory.peak_bytes)


def run_server_with_clients(datasets: dict[str, Dataset], rounds: int) -> ServerRun:
    """Run a server and one client process per dataset to the end; what the server measured,
    and what the kernel measured of it."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        server, port, first = start_server(
            "--port",
            "0",
            "--clients",
            str(len(datasets)),
            "--rounds",
            str(rounds),
            "--difficulty",
            str(MANY_CLIENTS_DIFFICULTY),
            "--chain",
            str(folder / "chain.jsonl"),
            cwd=folder,
        )
        memory = PeakMemory(server)
        clients = []
        watchdog = threading.Timer(RUN_WATCHDOG_S, server.kill)  # a hang ends the run, not us
        watchdog.start()
        try:
            for name, data in datasets.items():
                rows, replica = folder / f"{name}.csv", folder / f"{name}.jsonl"
                save_dataset(data, rows)
                flags = ("--port", str(port), "--replica", str(replica))
                clients.append(start_client(name, rows, *flags, cwd=folder))
            lines = [first, *server.stdout]  # to the end of its output, so to its exit
            exit_code = server.wait()
            memory.join()
            peak_bytes = memory.peak_bytes
            per_round = read_metrics(folder / "chain.metrics.csv")
        finally:
            watchdog.cancel()
            for process in [server, *clients]:
                process.kill()
                process.communicate()
    round_ms = list(1000 * per_round["round_s"])
    own_ms = list(1000 * per_round["server_cpu_s"])
    return ServerRun(exit_code, round_ms, own_ms, peak_bytes, "".join(lines))


def read_metrics(path: Path) -> pd.DataFrame:
    """The server's metrics file, one row a round (the columns that are per client dropped)."""
    try:
        rows = pd.read_csv(path)
    except (OSError, ValueError):  # the run failed before its first round
        return pd.DataFrame(columns=["round_s", "server_cpu_s", "mining_s", "train_s"])
    per_round = rows.groupby("round")
    return per_round.first().assign(train_s=per_round["train_s"].max())


class PeakMemory(threading.Thread):
    """Follows a process's peak resident memory while it runs (start it at once)."""

    # The high-water mark of the program's own memory (VmHWM in /proc/PID/status), read until
    # it exits: it only rises, so the last reading holds the peak but for the process's final
    # milliseconds, when it is freeing, not growing. Not the kernel's ru_maxrss at exit, which
    # also counts the memory of the process it was forked from, as it stood before exec: a
    # benchmark that had just loaded a large CSV made every server "peak" at 820 MB.

    def __init__(self, process: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{process.pid}/status")
        self.peak_bytes = 0
        self.start()

    def run(self) -> None:
        while True:
            try:
                status = self.status.read_text()
            except OSError:  # exited (reaped)
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_bytes = max(self.peak_bytes, int(line.split()[1]) * 1024)
                    break
            else:
                return  # a zombie: its memory is gone
            time.sleep(0.005)


def pooled_ratios(datasets: dict[str, Dataset], history: list[SimulatedRound]) -> list[float]:
    """Each round's pooled-rows MSE over that of numpy lstsq on the same rows."""
    everything = pooled(datasets)
    reference = mse(fit_lstsq(everything.X, everything.y), everything.X, everything.y)
    return [mse(r.global_model, everything.X, everything.y) / reference for r in history]


def sorted_split(column: str, n_clients: int) -> dict[str, Dataset]:
    """The bundled rows pooled, sorted by COLUMN and cut into N_CLIENTS shards."""
    return split_sorted(pooled(bundled()), column, n_clients)


NON_IID = {
    "sorted by bmi, 2 clients": (lambda: sorted_split("bmi", 2), 1.001, 10),
    "sorted by age, 2 clients": (lambda: sorted_split("age", 2), 1.001, 10),
    "sorted by age, 8 clients": (lambda: sorted_split("age", 8), 1.001, 10),
    "split by OHE_yes (smokers apart)": (
        lambda: split_by_value(pooled(bundled()), "OHE_yes"),
        1.001,
        20,
    ),
    "the bundled IID split": (bundled, 1.0001, 5),
}


def non_iid() -> None:
    print(
        "non-IID: pooled-rows MSE of the global model / lstsq's, by rule, after 5 / 10 / 20 "
        "rounds (goal: by the round named); 'above': rounds of the 20 where scaffold is above "
        "FedAvg"
    )
    warm_up()
    print(f"  {'split':36}{'rule':>8}{'5':>10}{'10':>10}{'20':>10}{'goal':>16}{'above':>7}")
    for label, (clients, goal, by_round) in NON_IID.items():
        datasets = clients()
        by_rule = {
            rule: pooled_ratios(datasets, simulate(datasets, rounds=20, aggregation=rule))
            for rule in (FEDAVG, SCAFFOLD)
        }
        above = sum(s > f for s, f in zip(by_rule[SCAFFOLD], by_rule[FEDAVG], strict=True))
        for rule, ratios in by_rule.items():
            figures = "".join(f"{ratios[r - 1]:>10.6f}" for r in (5, 10, 20))
            note = f"{above:>7}" if rule == SCAFFOLD else ""
            print(f"  {label:36}{rule:>8}{figures}{f'<= {goal} by {by_round}':>16}{note}")


ROBUST = [
    (FEDAVG, {}, None),
    (MEDIAN, {BYZANTINE: 1.0}, 1.06),
    (TRIMMED_MEAN, {BYZANTINE: 1.0}, 1.2),
    (KRUM, {BYZANTINE: 1.0}, 1.005),
]


def poisoning() -> None:
    print(
        "poisoning: 5 clients (the bundled rows in 5 shards), 5 rounds; pooled-rows MSE / "
        "lstsq's, without and with cli5 sending\n  scale=-10 (attacked), its honest model "
        "plus noise=0.02 (close), and the same claiming 20x its rows;\n  Krum's scale from "
        "the held-out test.csv, as the server takes it"
    )
    warm_up()
    datasets = split_rows(pooled(bundled()), 5)
    test = load_dataset(settings.bundled_data("test.csv")).in_order(datasets["cli1"].feature_names)
    close = {"cli5": parse_poison("noise=0.02")}
    attacks = {
        "honest": ({}, None),
        "attacked": ({"cli5": parse_poison("scale=-10")}, None),
        "close": (close, None),
        "close, 20x rows": (close, {"cli5": 20 * datasets["cli5"].n_samples}),
    }
    print(
        f"  {'rule (byzantine 1)':20}{'honest':>12}{'attacked':>14}{'goal (attacked)':>18}"
        f"{'close':>12}{'close, 20x rows':>17}"
    )
    by_round = {}
    for rule, parameters, goal in ROBUST:
        ratios = {
            label: pooled_ratios(
                datasets,
                simulate(
                    datasets,
                    rounds=5,
                    aggregation=rule,
                    parameters=parameters,
                    poison=poison,
                    declared_rows=claimed,
                    scale=feature_scale(test.X),
                ),
            )
            for label, (poison, claimed) in attacks.items()
        }
        by_round[rule] = ratios
        wanted = "shows the harm" if goal is None else f"<= {goal}"
        final = {label: values[-1] for label, values in ratios.items()}
        print(
            f"  {rule:20}{final['honest']:>12.6f}{final['attacked']:>14.6g}{wanted:>18}"
            f"{final['close']:>12.6g}{final['close, 20x rows']:>17.6g}"
        )
    for label in ("close", "close, 20x rows"):
        figures = " ".join(f"{ratio:.6f}" for ratio in by_round[KRUM][label])
        print(f"  by round, krum, {label}: {figures}")


PRIVACY_SEEDS = 10
PRIVACY_ROWS = 20_000  # a client's, in the synthetic cases
PRIVACY_FEATURES = 12
PRIVACY_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, None)  # None: no privacy


def private_releases(
    datasets: dict[str, Dataset],
    schema: Schema,
    target: str,
    epsilon: float,
    seed: int,
    *,
    adaptive_ridge: bool = True,
) -> dict[str, PrivateRelease]:
    """Each client's release at EPSILON (δ 1e-5), its noise drawn from SEED: a benchmark's
    seed; a real client's noise comes from a secret one."""
    rng = np.random.default_rng([seed, 1])
    low, high = schema.ranges(next(iter(datasets.values())).feature_names, target)
    return {
        name: release(
            data.X, data.y, low, high, epsilon=epsilon, rng=rng, adaptive_ridge=adaptive_ridge
        )
        for name, data in sorted(datasets.items())
    }


def private_ratio(datasets: dict[str, Dataset], private, aggregation: str = FEDAVG) -> float:
    """The pooled-rows MSE / lstsq's of the global model after 5 rounds on private releases."""
    history = simulate(datasets, rounds=5, aggregation=aggregation, private=private)
    return pooled_ratios(datasets, history)[-1]


def privacy() -> None:
    print(
        f"privacy: pooled-rows MSE / non-private lstsq's after 5 rounds, each client's sums "
        f"released once with (ε, δ = 1e-5)-DP; median and worst of {PRIVACY_SEEDS} seeds"
    )
    warm_up()
    cases = [  # label, r2, epsilon, split, rule, goal
        ("ε 1", 0.8, 1.0, split_rows, FEDAVG, "<= 1.03"),
        ("ε 4", 0.8, 4.0, split_rows, FEDAVG, "<= 1.003"),
        ("ε 1, sorted by x1", 0.8, 1.0, lambda d, n: split_sorted(d, "x1", n), FEDAVG, "shows"),
        (
            "ε 1, sorted by x1",
            0.8,
            1.0,
            lambda d, n: split_sorted(d, "x1", n),
            SCAFFOLD,
            "<= 1.03, <= fedavg",
        ),
        ("ε 1, R² 0.99", 0.99, 1.0, split_rows, FEDAVG, "report"),
    ]
    print(
        f"  synthetic: 2 clients x {PRIVACY_ROWS:,} rows, {PRIVACY_FEATURES} features "
        "(R² 0.8 unless said); 'naive': the textbook perturbation (sensitivity 1, the whole "
        "budget on the sums, no adaptive ridge); 'better': seeds where ours is below naive's"
    )
    print(
        f"  {'case':22}{'rule':>10}{'median':>10}{'worst':>10}{'naive med':>11}"
        f"{'naive worst':>12}{'better':>8}{'goal':>22}"
    )
    for label, r2, epsilon, split, rule, goal in cases:
        ours, naive = [], []
        for seed in range(PRIVACY_SEEDS):
            data = synthetic_dataset(
                2 * PRIVACY_ROWS, PRIVACY_FEATURES, seed=seed, r2=r2, bounded=True
            )
            schema = synthetic_schema(PRIVACY_FEATURES, seed=seed, r2=r2)
            datasets = split(data, 2)
            for adaptive, ratios in ((True, ours), (False, naive)):
                private = private_releases(
                    datasets, schema, SYNTHETIC_TARGET, epsilon, seed, adaptive_ridge=adaptive
                )
                ratios.append(private_ratio(datasets, private, rule))
        figures = [statistics.median(ours), max(ours), statistics.median(naive), max(naive)]
        better = sum(o < n for o, n in zip(ours, naive, strict=True))
        print(
            f"  {label:22}{rule:>10}{figures[0]:>10.4f}{figures[1]:>10.4f}{figures[2]:>11.4f}"
            f"{figures[3]:>12.4f}{f'{better}/{len(ours)}':>8}{goal:>22}"
        )
    datasets = bundled()
    bundled_schema = load_schema(settings.bundled_data("schema.csv"))
    test = load_dataset(settings.bundled_data("test.csv"), target=settings.TARGET)
    test = test.in_order(datasets["cli1"].feature_names)
    print(
        "  bundled data (535 rows a client, data/schema.csv's bounds): by ε, the median of "
        f"{PRIVACY_SEEDS} seeds"
    )
    print(f"  {'ε':>8}{'pooled / lstsq':>16}{'worst':>10}{'test MSE':>10}")
    for epsilon in PRIVACY_EPSILONS:
        ratios, test_mse = [], []
        for seed in range(PRIVACY_SEEDS if epsilon else 1):
            private = (
                None
                if epsilon is None
                else private_releases(datasets, bundled_schema, settings.TARGET, epsilon, seed)
            )
            history = simulate(datasets, rounds=5, private=private)
            ratios.append(pooled_ratios(datasets, history)[-1])
            test_mse.append(mse(history[-1].global_model, test.X, test.y))
        label = "∞" if epsilon is None else f"{epsilon:g}"
        print(
            f"  {label:>8}{statistics.median(ratios):>16.4f}{max(ratios):>10.4f}"
            f"{statistics.median(test_mse):>10.4f}"
        )
    print("  the one-time release (clipping, sums, noise, calibration), per client:")
    for label, data, target, schema in (
        (
            f"{PRIVACY_ROWS:,} rows x {PRIVACY_FEATURES}",
            synthetic_dataset(PRIVACY_ROWS, PRIVACY_FEATURES, bounded=True),
            SYNTHETIC_TARGET,
            synthetic_schema(PRIVACY_FEATURES),
        ),
        ("bundled cli1", datasets["cli1"], settings.TARGET, bundled_schema),
    ):
        seconds = best_time(
            lambda d=data, t=target, s=schema: private_releases({"c": d}, s, t, 1.0, 0), 9
        )
        print(f"  {label:>24}: {seconds * 1000:.1f} ms (goal <= 50 ms)")
    # The first release in a new process also imports dp-accounting, whose package imports all
    # its accountants (and SciPy's statistics) whichever one is used.
    first = subprocess.run(
        [sys.executable, "-c", FIRST_RELEASE],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    ).stdout.strip()
    print(f"  {'the first, in a new process':>24}: {first} ms, dp-accounting's import included")


FIRST_RELEASE = """
import time
import numpy as np
from fedchain.learning.privacy import release
from fedchain.learning.synthetic import synthetic_dataset, synthetic_schema
data = synthetic_dataset(20_000, 12, bounded=True)
low, high = synthetic_schema(12).ranges(data.feature_names, "y")
started = time.perf_counter()
release(data.X, data.y, low, high, epsilon=1.0, rng=np.random.default_rng(0))
print(f"{(time.perf_counter() - started) * 1000:.0f}")
"""


SECTIONS = {
    "quality": quality,
    "noniid": non_iid,
    "poisoning": poisoning,
    "privacy": privacy,
    "speed": speed,
    "csv": csv_loading,
    "rows": training_cost_by_rows,
    "mining": mining_rate,
    "network": network_overhead,
    "trust": trust_cost,
    "clients": many_clients,
    "flower": flower_cost,
}


# A section's block in a page: its output, between markers on lines of their own, so the prose
# around it stays hand-written and a rerun of one section replaces only that section's block.
MARKER = re.compile(r"^<!-- (/?)benchmark:(\S+) -->$", re.MULTILINE)
EXIT_OK, EXIT_BAD_PAGE = 0, 1


def blocks(text: str, known: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Where each section's block lies in TEXT, from its start marker to the end of its end
    marker; ValueError, naming the line, for a marker of no known section or one out of place."""
    known = list(known)
    spans: dict[str, tuple[int, int]] = {}
    opened: tuple[str, int] | None = None  # the section whose end marker is due, where it began
    for match in MARKER.finditer(text):
        closing, name = match[1] == "/", match[2]
        line = text.count("\n", 0, match.start()) + 1
        if name not in known:
            raise ValueError(
                f"line {line}: {match[0]} names no section (sections: {', '.join(known)})"
            )
        if closing and (opened is None or opened[0] != name):
            raise ValueError(f"line {line}: {match[0]} ends no block that is open")
        if closing:
            spans[name] = (opened[1], match.end())
            opened = None
        elif opened is not None:
            raise ValueError(
                f"line {line}: {match[0]} opens a block inside {opened[0]}'s: "
                f"<!-- /benchmark:{opened[0]} --> is missing"
            )
        elif name in spans:
            raise ValueError(f"line {line}: a second block for {name}")
        else:
            opened = (name, match.start())
    if opened is not None:
        line = text.count("\n", 0, opened[1]) + 1
        raise ValueError(
            f"line {line}: {opened[0]}'s block has no end marker <!-- /benchmark:{opened[0]} -->"
        )
    return spans


def check_page(text: str, names: Iterable[str], known: Iterable[str]) -> None:
    """ValueError unless TEXT's markers are well formed and hold a block for each of NAMES."""
    spans = blocks(text, known)
    missing = [name for name in names if name not in spans]
    if missing:
        raise ValueError(
            f"no block for {', '.join(missing)}: put <!-- benchmark:SECTION --> and "
            "<!-- /benchmark:SECTION --> on lines of their own where its figures go"
        )


def replace_block(text: str, name: str, output: str, stamp: str, known: Iterable[str]) -> str:
    """TEXT with section NAME's block holding OUTPUT in a code block, under STAMP."""
    check_page(text, [name], known)
    start, end = blocks(text, known)[name]
    block = (
        f"<!-- benchmark:{name} -->\n{stamp}\n\n```\n{output.rstrip()}\n```\n"
        f"<!-- /benchmark:{name} -->"
    )
    return text[:start] + block + text[end:]


def machine_stamp(now: datetime | None = None) -> str:
    """When and where the figures below it were measured, in one line."""
    now = now or datetime.now(UTC)
    try:
        memory = f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        memory = "unknown memory"
    return (
        f"Measured {now:%Y-%m-%d %H:%M} UTC on {platform.platform()}, {os.cpu_count()} CPUs, "
        f"{memory}, Python {platform.python_version()}, NumPy {np.__version__}:"
    )


class Tee(io.StringIO):
    """Keeps what a section prints, and prints it as it comes."""

    def __init__(self, terminal):
        super().__init__()
        self.terminal = terminal

    def write(self, text: str) -> int:
        self.terminal.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.terminal.flush()


def run_sections(
    names: Iterable[str], sections: dict[str, Callable[[], None]], page: Path | None = None
) -> None:
    """Run each named section, printing its figures; with PAGE, also put them in its block
    there, each as soon as its section ends (so a later failure keeps the earlier figures)."""
    for name in names:
        if page is None:
            sections[name]()
            continue
        stamp = machine_stamp()
        with contextlib.redirect_stdout(Tee(sys.stdout)) as output:
            sections[name]()
        page.write_text(replace_block(page.read_text(), name, output.getvalue(), stamp, sections))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument(
        "--write",
        metavar="PAGE",
        type=Path,
        help="also write each section's output into its block in PAGE, between markers "
        "(see docs/benchmarks.md), under a line with the date and the machine",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    names = args.sections or list(SECTIONS)
    if args.write:
        try:  # before any section runs: a refused page should not cost minutes of measuring
            check_page(args.write.read_text(), names, SECTIONS)
        except (OSError, ValueError) as error:
            print(f"benchmark.py: {args.write}: {error}", file=sys.stderr)
            return EXIT_BAD_PAGE
    run_sections(names, SECTIONS, args.write)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
