"""The Flower apps' parts as plain functions: the records that carry the protocol's messages,
the run config read into a run's settings, and which client a node is."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from processes import ROOT

from fedchain import settings
from fedchain.federation.client import ClientFailed
from fedchain.flower.config import ConfigError, FlowerRun
from fedchain.flower.node import identity
from fedchain.flower.records import RECORD, pack, unpack
from fedchain.learning.aggregation import BYZANTINE, PROXIMAL
from fedchain.learning.dataset import DataError, load_dataset
from fedchain.wire.frames import encode_message
from fedchain.wire.messages import ProtocolError

MAX = 1 << 20


def test_messages_cross_in_order_and_intact():
    messages = [
        {"type": "waiting", "reason": "for cli2"},
        {"type": "train", "round": 1, "weights": np.arange(3.0), "bias": 0.5},
    ]
    got, key, failure = unpack(pack(messages, server_key="ab" * 32), MAX)
    assert [m["type"] for m in got] == ["waiting", "train"]
    assert np.array_equal(got[1]["weights"], np.arange(3.0))
    assert (key, failure) == ("ab" * 32, "")


def content(**fields):
    return RecordDict({RECORD: ConfigRecord(fields)})


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (RecordDict({}), "without the 'fedchain' record"),
        (content(frames="text", server_key="", failure=""), "'frames' is not bytes"),
        (content(frames=b"", failure=""), "'server_key' is not str"),
        (
            content(
                frames=encode_message({"type": "done", "blocks": 3})[:-1], server_key="", failure=""
            ),
            "bytes after the last whole frame",
        ),
        (content(frames=b"FLBM\x01\xff\xff\xff\xff", server_key="", failure=""), "frame"),
    ],
    ids=["no record", "frames not bytes", "no key", "a cut frame", "an oversized frame"],
)
def test_a_record_that_is_not_whole_frames_is_refused_by_name(record, error):
    with pytest.raises(ProtocolError, match=error):
        unpack(record, MAX)


def test_a_frame_naming_a_forbidden_global_runs_nothing(tmp_path):
    # The same restricted unpickler as the socket's: a pickle that would call os.system is
    # refused before anything in it runs.
    witness = tmp_path / "ran"
    payload = b"\x80\x05cos\nsystem\n(V" + f"touch {witness}".encode() + b"\ntR."
    frame = b"FLBM\x01" + len(payload).to_bytes(4, "big") + payload
    with pytest.raises(ProtocolError, match=r"os\.system"):
        unpack(content(frames=frame, server_key="", failure=""), MAX)
    assert not witness.exists()


def test_the_run_config_defaults_are_server_pys():
    run = FlowerRun.from_config({})
    assert (run.rounds, run.clients, run.min_clients, run.aggregation) == (5, 2, 2, "fedavg")
    assert run.target.column == "charges" and run.target.unit == "ln(USD per year)"
    assert FlowerRun.from_config({"target": "y"}).target.unit == ""
    assert FlowerRun.from_config({"test": "none"}).test is None


def test_the_rules_parameters_come_from_the_config():
    krum = FlowerRun.from_config({"aggregation": "krum", "clients": 5, "byzantine": 1})
    assert krum.parameters == {BYZANTINE: 1.0}
    scaffold = FlowerRun.from_config({"aggregation": "scaffold", "proximal": 0.5})
    assert scaffold.parameters == {PROXIMAL: 0.5}


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"rounds": 0}, "rounds must be 1 to"),
        ({"rounds": -1}, "rounds must be 1 to"),
        ({"rounds": "5"}, "rounds must be a whole number, not '5'"),
        ({"min-clients": 3}, "min-clients 3 is more than clients 2"),
        ({"aggregation": "mean"}, "aggregation 'mean' is not one of"),
        ({"byzantine": 1}, "byzantine is for a robust aggregation, not fedavg"),
        ({"proximal": 0.5}, "proximal is for aggregation scaffold, not fedavg"),
        ({"aggregation": "krum", "byzantine": 1}, "krum needs at least 5 clients a round"),
        ({"round-timeout-s": 0}, "round-timeout-s must be more than 0"),
        ({"target": " y"}, "target .* with no spaces around it"),
        ({"chain": 3}, "chain must be text, not 3"),
    ],
    ids=lambda value: str(value)[:30],
)
def test_a_bad_run_config_value_is_refused_naming_its_key(config, error):
    with pytest.raises(ConfigError, match=error):
        FlowerRun.from_config(config)


def test_two_nodes_are_cli1_and_cli2_on_the_bundled_halves():
    run = FlowerRun()
    first = identity({"partition-id": 0, "num-partitions": 2}, run)
    second = identity({"partition-id": 1, "num-partitions": 2}, run)
    assert (first.name, second.name) == ("cli1", "cli2")
    bundled = load_dataset(ROOT / "data" / "client2.csv")
    assert np.array_equal(second.data.X, bundled.X) and np.array_equal(second.data.y, bundled.y)


def test_more_nodes_split_the_bundled_rows_evenly():
    run = FlowerRun()
    parts = [identity({"partition-id": p, "num-partitions": 5}, run) for p in range(5)]
    assert [p.name for p in parts] == ["cli1", "cli2", "cli3", "cli4", "cli5"]
    assert sum(p.data.n_samples for p in parts) == 1070
    assert {p.data.n_samples for p in parts} == {214}


def test_a_deployed_node_names_its_client_and_rows(tmp_path):
    rows = ROOT / "data" / "client1.csv"
    node = identity({"name": "hospital-a", "data": str(rows)}, FlowerRun())
    assert node.name == "hospital-a" and node.data.n_samples == 535
    with pytest.raises(ClientFailed, match="both name and data, or neither"):
        identity({"name": "hospital-a"}, FlowerRun())
    with pytest.raises(ClientFailed, match="neither name and data nor partition-id"):
        identity({}, FlowerRun())


def test_without_the_bundled_rows_a_node_says_how_to_do_without_them(monkeypatch, tmp_path):
    # Flower runs the app from a copy of the package with no CSV files in it.
    monkeypatch.setattr(settings, "bundled_data", lambda name: tmp_path / name)
    with pytest.raises(DataError, match=r"pip install \.\[flower\]\) or name the rows"):
        identity({"partition-id": 0, "num-partitions": 2}, FlowerRun())


def test_the_bundled_rows_are_found_in_the_installed_package_when_not_beside_this_copy(
    monkeypatch, tmp_path
):
    # Flower runs the app from a copy of the package with no CSV files, and no data/ beside
    # it: the rows come from the package pip installed.
    installed = tmp_path / "site-packages" / "fedchain" / "bundled_data" / "rows.csv"
    installed.parent.mkdir(parents=True)
    installed.write_text("a,charges\n1,2\n")

    class Installed:
        def locate_file(self, path):
            return tmp_path / "site-packages" / path

    monkeypatch.setattr(settings, "distribution", lambda name: Installed())
    assert settings.bundled_data("rows.csv") == installed
    assert settings.bundled_data("test.csv") == ROOT / "data" / "test.csv"  # the checkout's first
