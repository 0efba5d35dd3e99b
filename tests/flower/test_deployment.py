"""The federation deployed on Flower, as a real one runs: a SuperLink with TLS and SuperNode
authentication, one SuperNode a client, and `flwr run` of this checkout. Flower's deployment
answers every message in a fresh process after polling for seconds, so these tests share one
SuperLink and its two SuperNodes (cli1, cli2) and keep the runs short."""

import pytest
from flower_certificates import make_node_key
from flower_deployment import Deployment, deployment
from memory_runs import run_federation
from processes import ROOT

from fedchain.learning.dataset import load_dataset
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.store import load_chain
from fedchain.settings import bundled_data
from fedchain.trust.keys import load_or_create_key, public_hex

SEED = 7
ROUNDS = 3
DATA = {name: bundled_data(f"client{k}.csv") for k, name in ((1, "cli1"), (2, "cli2"))}
# The FAB Flower builds of the checkout carries Python files only, never the bundled CSVs,
# so the server is told where the test rows are.
TEST_ROWS = bundled_data("test.csv")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """The SuperLink, with cli1 and cli2 registered and connected; every process it started
    is stopped at the end, and its ports checked closed."""
    folder = tmp_path_factory.mktemp("deployment")
    with deployment(folder) as flower:
        start_nodes(flower, DATA)
        yield flower


def start_nodes(flower: Deployment, data: dict, *, register: bool = True) -> dict:
    """A SuperNode for each client in DATA (name: rows), with a Flower key of its own that
    is REGISTERed or not; by name."""
    keys = {name: make_node_key(flower.folder / "node-keys", name) for name in data}
    if register:
        flower.register(*(public for _, public in keys.values()))
    nodes = {name: ({"name": name, "data": str(data[name])}, keys[name][0]) for name in data}
    return flower.start_supernodes(nodes)


def run_config(folder, **more) -> dict:
    """A short run's config, every file of it in FOLDER."""
    return {
        "rounds": ROUNDS,
        "seed": SEED,
        "difficulty": 8,
        "chain": folder / "chain.jsonl",
        "key": folder / "keys" / "server.key",
        "keys": folder / "keys",
        "replicas": folder / "replicas",
        "test": TEST_ROWS,
        # Short, but far above a deployed round (6 to 13 s) and the joins (some 7 s).
        "round-timeout-s": 30.0,
        "join-timeout-s": 30.0,
        **more,
    }


def test_a_supernode_whose_key_is_not_registered_is_refused(deployed):
    node = start_nodes(deployed, {"rogue": DATA["cli1"]}, register=False)["rogue"]
    assert node.wait_exit() != 0
    assert "[code: 2004] Failed to activate SuperNode" in node.output


def test_a_deployed_run_leaves_out_a_wrong_chain_key_and_makes_the_in_memory_chain(
    deployed, tmp_path
):
    # One run shows both, since a deployed run costs a minute: cli3's Flower key is
    # registered, so Flower lets it in, but the run's authorized keys name another chain key
    # for cli3, so our admission refuses it; the quorum of two begins at the join timeout, and
    # every block records why cli3 is missing. cli1 and cli2 then make, bit for bit, the chain
    # an in-memory run of the two makes.
    keys = tmp_path / "keys"
    for name in ("cli1", "cli2", "cli3"):
        load_or_create_key(keys / f"{name}.key")
    impostor, _ = load_or_create_key(tmp_path / "other" / "cli3.key")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(
        "".join(
            f"{name} {public_hex(load_or_create_key(keys / f'{name}.key')[0])}\n"
            for name in ("cli1", "cli2")
        )
        + f"cli3 {public_hex(impostor)}\n"
    )
    third = tmp_path / "client3.csv"  # every other row of cli1's: its own rows, same columns
    lines = DATA["cli1"].read_text().splitlines(keepends=True)
    third.write_text("".join(lines[:1] + lines[1::2]))
    node = start_nodes(deployed, {"cli3": third})["cli3"]
    try:
        assert node.process.poll() is None, node.output
        # Well past the joins (some 7 s deployed, more on a loaded machine).
        config = {"min-clients": 2, "authorized-keys": authorized, "join-timeout-s": 20.0}
        done = deployed.run(ROOT, run_config(tmp_path, clients=3, **config))
    finally:
        deployed.stop(node)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    # The apps run the package from the FAB the SuperLink installed, not from the checkout.
    assert f"Successfully installed fedchain to {deployed.folder / 'flwr-home' / 'apps'}" in said
    key = public_hex(load_or_create_key(keys / "cli3.key")[0])
    assert f"cli3's key {key[:16]}… is not the one authorized" in said
    blocks = load_chain(tmp_path / "chain.jsonl").blocks
    verify_chain(blocks)
    assert len(blocks) == ROUNDS + 2, said  # genesis, the rounds, the closing block
    for block in blocks[1:-1]:
        assert block.cli == ("cli1", "cli2")
        assert key[:16] in block.missing["cli3"], block.missing
    datasets = {name: load_dataset(path) for name, path in DATA.items()}
    expected = run_federation(tmp_path / "memory", datasets, rounds=ROUNDS, seed=SEED)
    assert [b.server_model for b in blocks] == [b.server_model for b in expected]  # bit for bit
