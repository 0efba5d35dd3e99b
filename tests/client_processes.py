"""Real clients for the end-to-end tests: client.py on shards of the bundled rows split by bmi,
so each client sees one range of it (non-IID)."""

from processes import ROOT

from fedchain.learning.dataset import load_dataset, save_dataset
from fedchain.learning.partition import pool, split_sorted


def split_by_bmi(tmp_path, n_clients=2):
    """The bundled rows pooled, sorted by bmi and cut: each client sees one range of bmi."""
    everything = pool(load_dataset(ROOT / "data" / f"client{i}.csv") for i in (1, 2))
    for name, shard in split_sorted(everything, "bmi", n_clients).items():
        save_dataset(shard, tmp_path / f"{name}.csv")
    # As the clients will read them: the simulation must see the same bits.
    return {
        name: load_dataset(tmp_path / f"{name}.csv")
        for name in split_sorted(everything, "bmi", n_clients)
    }


def split_client(programs, tmp_path, port, name):
    """client.py as NAME on its shard TMP_PATH/NAME.csv, its replica beside it."""
    return programs(
        "client.py",
        "--name",
        name,
        "--data",
        tmp_path / f"{name}.csv",
        "--port",
        port,
        "--replica",
        tmp_path / f"{name}.jsonl",
    )
