"""Many clients: a server and 32 real client processes on 127.0.0.1 finish a run together."""

from pathlib import Path

import numpy as np
from processes import ROOT, run_blockchain_cli, start_server

from fedchain.learning.dataset import Dataset, load_dataset, save_dataset
from fedchain.learning.partition import split_rows
from fedchain.ledger.store import load_chain

N_CLIENTS, ROUNDS = 32, 5
# 33 Python processes start at once on two shared cores, each importing NumPy, pandas and
# PyGAD: joining takes about 15 s here and the rounds a few more. The watchdog is far above
# that, so only a hang trips it.
WATCHDOG_S = 300.0


def shard_files(folder: Path, n_clients: int) -> dict[str, Path]:
    """The bundled training rows, pooled in file order and split into N_CLIENTS CSV files in
    FOLDER, named by client (cli01, cli02, ...)."""
    halves = [load_dataset(ROOT / "data" / f"client{i}.csv") for i in (1, 2)]
    pooled = Dataset(
        halves[0].feature_names,
        np.vstack([half.X for half in halves]),
        np.concatenate([half.y for half in halves]),
    )
    files = {}
    for name, shard in split_rows(pooled, n_clients).items():
        files[name] = folder / f"{name}.csv"
        save_dataset(shard, files[name])
    return files


def test_32_client_processes_complete_a_run_with_every_model_on_the_chain(programs, tmp_path):
    shards = shard_files(tmp_path, N_CLIENTS)
    server, port = start_server(programs, tmp_path, "--clients", N_CLIENTS, "--rounds", ROUNDS)
    # Every program runs in tmp_path: each client makes its key in tmp_path/keys.
    clients = []
    for name, rows in shards.items():
        replica = tmp_path / f"{name}.jsonl"
        clients.append(
            programs(
                "client.py", "--name", name, "--data", rows, "--port", port, "--replica", replica
            )
        )
    codes = [program.finish(timeout_s=WATCHDOG_S) for program in [server, *clients]]
    failed = [p.output for p, code in zip([server, *clients], codes, strict=True) if code != 0]
    assert not failed, "\n\n".join(failed)

    chain_path = tmp_path / "chain.jsonl"
    result = run_blockchain_cli("verify", chain_path)
    complete = f"valid: {ROUNDS + 2} blocks; the run is complete ({ROUNDS} of {ROUNDS} rounds)"
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == complete
    blocks = load_chain(chain_path).blocks
    assert len(blocks) == ROUNDS + 2  # the genesis, the rounds, the closing block
    for block in blocks[1:-1]:
        assert block.cli == tuple(shards)  # every client's model, in name order
        assert sorted(block.client_model) == sorted(shards)
        assert not block.missing
    assert not blocks[-1].cli  # the closing block holds attestations, no models
    for name in shards:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain_path.read_bytes(), name
