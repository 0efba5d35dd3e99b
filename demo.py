"""The whole run in one command: the server and both clients as separate processes on a free
loopback port, their output prefixed, ending with the verified chain and how the federated model
compares with least squares fitted on the pooled rows.

`python demo.py [--rounds R] [--difficulty BITS]`; the run's files go to runs/demo-<time>/.
`python demo.py --clients 5 --poison 1 --aggregation krum` shows a poisoning attack and a robust
rule: the bundled rows are split into 5 shards, the last client sends the received model plus
-10 x its honest change, and the chain records whom the rule left out.
`python demo.py --sort-by bmi --aggregation scaffold --rounds 10` shows drift on non-IID rows and
its correction: the pooled rows sorted by bmi and cut into one range a client, so FedAvg settles
short of the pooled fit (try it without --aggregation) and scaffold reaches it.
"""

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedchain.cli.arguments import add_output_flags, integer_in
from fedchain.cli.programs import start_client, start_server
from fedchain.learning.aggregation import KNOWN_RULES, RULES
from fedchain.learning.dataset import load_dataset, save_dataset
from fedchain.learning.linear_model import fit_lstsq, mse
from fedchain.learning.partition import pool, split_rows, split_sorted
from fedchain.ledger.block import MAX_DIFFICULTY_BITS
from fedchain.ledger.store import load_chain
from fedchain.settings import bundled_data

HERE = Path(__file__).resolve().parent
CLIENTS = {"cli1": bundled_data("client1.csv"), "cli2": bundled_data("client2.csv")}
RUN_TIMEOUT_S = 300.0
POISON = "scale=-10"  # what --poison's attackers send
_print_lock = threading.Lock()


def relay(label: str, process: subprocess.Popen) -> threading.Thread:
    def copy_lines() -> None:
        for line in process.stdout:
            show(f"[{label}] {line.rstrip()}")

    thread = threading.Thread(target=copy_lines, daemon=True)
    thread.start()
    return thread


def show(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def client_files(n_clients: int, run_dir: Path, sort_by: str | None = None) -> dict[str, Path]:
    """The bundled two files for two clients; else their rows pooled in file order (or sorted
    by the column SORT_BY, so each client holds one range of it) and split into N_CLIENTS
    shards, written to RUN_DIR."""
    if n_clients == len(CLIENTS) and sort_by is None:
        return dict(CLIENTS)
    pooled = pool(load_dataset(path) for path in CLIENTS.values())
    shards = (
        split_rows(pooled, n_clients)
        if sort_by is None
        else split_sorted(pooled, sort_by, n_clients)
    )
    files = {}
    for name, shard in shards.items():
        files[name] = run_dir / f"{name}.csv"
        save_dataset(shard, files[name])
    return files


def show_attack(chain_path: Path, attackers: Sequence[str]) -> None:
    """The attackers' updates as the chain holds them, against the global model, and what the
    rule made of them."""
    for block in load_chain(chain_path).blocks:
        for name in attackers:
            if name not in block.cli:
                continue
            sent, made = block.client_model[name].model, block.server_model
            first = block.feature_names[0]
            show(
                f"block {block.index}: attacker {name} sent bias={sent.bias:.4g} "
                f"{first}={sent.weights[0]:.4g}; the global model has "
                f"bias={made.bias:.4g} {first}={made.weights[0]:.4g}"
            )
            if RULES[block.aggregation].keeps_clients:
                kept = block.choice[name][1] == 1.0
                show(
                    f"  {block.aggregation} {'KEPT' if kept else 'left out'} {name} "
                    f"(score {block.choice[name][0]:.3g})"
                )
            elif block.choice:
                cut = sum(v != 0.0 for v in block.choice[name])
                show(
                    f"  {block.aggregation} did not use {cut} of {name}'s "
                    f"{len(block.choice[name])} values"
                )


def compare_with_central(chain_path: Path, files: dict[str, Path]) -> None:
    final = [block for block in load_chain(chain_path).blocks if block.cli][-1]  # the last round
    clients = [load_dataset(path) for path in files.values()]
    test = load_dataset(bundled_data("test.csv"))
    X = np.vstack([c.X for c in clients])
    y = np.concatenate([c.y for c in clients])
    central = fit_lstsq(X, y)  # what pooling everyone's rows would give: the privacy cost avoided
    federated = final.server_model
    train_ratio = mse(federated, X, y) / mse(central, X, y)
    show(f"{'':34}{f'federated (round {final.index})':>22}{'central lstsq':>16}")
    for label, rows_X, rows_y in (
        ("held-out test rows", test.X, test.y),
        ("pooled client rows", X, y),
    ):
        show(
            f"{'MSE on the ' + label:34}{mse(federated, rows_X, rows_y):>22.4f}"
            f"{mse(central, rows_X, rows_y):>16.4f}"
        )
    show(f"federated / central MSE on the pooled client rows: {train_ratio:.6f}")


def main(argv: Sequence[str] | None = None) -> int:
    # The docstring's first paragraph, whole: its first line alone stops mid-sentence.
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="demo.py", description=summary)
    parser.add_argument("--rounds", type=integer_in(1), default=None, help="default: the server's")
    parser.add_argument(
        "--difficulty",
        type=integer_in(0, MAX_DIFFICULTY_BITS),
        default=None,
        help="default: the server's",
    )
    parser.add_argument(
        "--clients",
        type=integer_in(2, 64),
        default=len(CLIENTS),
        help="clients; more than 2 split the bundled rows",
    )
    parser.add_argument(
        "--poison",
        type=integer_in(0),
        default=0,
        help=f"how many of the clients (the last ones) attack, sending {POISON}",
    )
    parser.add_argument(
        "--aggregation", choices=KNOWN_RULES, default=None, help="default: the server's (fedavg)"
    )
    columns = load_dataset(CLIENTS["cli1"]).feature_names
    parser.add_argument(
        "--sort-by",
        choices=columns,
        default=None,
        metavar="COLUMN",
        help="split the pooled rows sorted by COLUMN, one range a client "
        f"(non-IID); one of {', '.join(columns)}",
    )
    parser.add_argument(
        "--byzantine",
        type=integer_in(0),
        default=None,
        help="attackers the rule assumes; default: the server's",
    )
    add_output_flags(parser)
    args = parser.parse_args(argv)
    # -q and -v reach the programs: -q leaves their warnings and the demo's verdict.
    output = ["-q"] if args.quiet else ["-v"] if args.verbose else []
    if args.poison >= args.clients:
        parser.error("--poison must leave at least one honest client")
    started = time.monotonic()
    (HERE / "runs").mkdir(exist_ok=True)
    # Named by the time, and unique even when two demos start in the same second.
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("demo-%Y%m%d-%H%M%S-"), dir=HERE / "runs"))
    chain_path = run_dir / "chain.jsonl"
    # The run's keys live in its folder too: each demo is a run of its own, with new keys.
    keys = run_dir / "keys"
    server_args = ["--port", "0", "--chain", str(chain_path), "--key", str(keys / "server.key")]
    server_args += ["--clients", str(args.clients), *output]
    for flag, value in (
        ("--rounds", args.rounds),
        ("--difficulty", args.difficulty),
        ("--aggregation", args.aggregation),
        ("--byzantine", args.byzantine),
    ):
        if value is not None:
            server_args += [flag, str(value)]
    files = client_files(args.clients, run_dir, args.sort_by)
    attackers = list(files)[len(files) - args.poison :]

    processes: dict[str, subprocess.Popen] = {}
    try:
        server, port, first = start_server(*server_args, cwd=HERE)
        processes["server"] = server
        show(f"[server] {first.rstrip()}")
        if port is None:
            relay("server", server).join(timeout=5)
            show("demo: the server did not start")
            return 1
        relays = [relay("server", server)]
        for name, data in files.items():
            replica = run_dir / f"{name}.jsonl"
            attack = ["--poison", POISON] if name in attackers else []
            processes[name] = start_client(
                name,
                data,
                "--port",
                str(port),
                "--replica",
                str(replica),
                "--key",
                str(keys / f"{name}.key"),
                "--known-servers",
                str(keys / "known_servers"),
                *output,
                *attack,
                cwd=HERE,
            )
            relays.append(relay(name, processes[name]))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        codes = {
            label: p.wait(timeout=max(0.1, deadline - time.monotonic()))
            for label, p in processes.items()
        }
        for thread in relays:
            thread.join(timeout=5)
    except subprocess.TimeoutExpired:
        show(f"demo: the run took longer than {RUN_TIMEOUT_S:g} s; stopping it")
        return 1
    except KeyboardInterrupt:
        show("demo: interrupted")
        return 1
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    failed = [label for label, code in codes.items() if code != 0]
    if failed:
        show(f"demo: {', '.join(failed)} did not finish cleanly; the files are in {run_dir}")
        return 1
    chain_bytes = chain_path.read_bytes()
    for name in files:
        same = (run_dir / f"{name}.jsonl").read_bytes() == chain_bytes
        show(f"{name}'s replica {'is' if same else 'is NOT'} the server's chain, byte for byte")
        if not same:
            return 1
    if attackers:
        show_attack(chain_path, attackers)
    compare_with_central(chain_path, files)
    figure = run_dir / "convergence.png"
    plotted = subprocess.run(
        [
            sys.executable,
            str(HERE / "blockchain.py"),
            "plot",
            str(chain_path),
            "--metrics",
            str(chain_path.with_name("chain.metrics.csv")),
            "--pooled",  # the rows compare_with_central pooled: the figure's reference
            *map(str, files.values()),
            "-o",
            str(figure),
            "--known-servers",
            str(keys / "known_servers"),
        ],  # the key the clients pinned
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    if plotted.returncode != 0:
        show(f"demo: the figure could not be drawn: {plotted.stderr.strip()}")
        return 1
    show(f"the convergence figure: {figure.relative_to(HERE)}")
    show(f"done in {time.monotonic() - started:.1f} s; the chain is {chain_path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
