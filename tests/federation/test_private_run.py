"""A private run end to end: real processes, the bundled schema, clients with ε 1 and 2, and a
server that admits at most ε 2. What the clients send follows from their one release alone."""

import stat

import numpy as np
import pandas as pd
import pytest
from fake_server import FEATURES, FakeServer, Session, start_client
from processes import ROOT, run_blockchain_cli, start_server

from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.local_training import LocalProblem
from fedchain.learning.privacy import MECHANISM
from fedchain.learning.release_file import load_or_release, release_path
from fedchain.learning.schema import Schema, load_schema
from fedchain.learning.simulation import simulate
from fedchain.ledger.block import PrivacyTerms, RunRecord
from fedchain.ledger.chain import make_genesis
from fedchain.ledger.store import load_chain
from fedchain.trust.keys import public_hex

SCHEMA = ROOT / "data" / "schema.csv"
ROUNDS = 2


def client(programs, tmp_path, port, name, *extra):
    script = {"cli1": "client1.py", "cli2": "client2.py"}.get(name, "client.py")
    named = (
        []
        if name in ("cli1", "cli2")
        else ["--name", name, "--data", ROOT / "data" / "client1.csv"]
    )
    return programs(script, "--port", port, "--replica", tmp_path / f"{name}.jsonl", *named, *extra)


def test_a_private_run_records_each_guarantee_and_trains_on_the_releases_alone(programs, tmp_path):
    server, port = start_server(
        programs,
        tmp_path,
        "--rounds",
        ROUNDS,
        "--seed",
        "3",
        "--schema",
        SCHEMA,
        "--max-epsilon",
        "2",
    )
    # Refused at the door: a client without privacy, and one that would spend more than 2.
    plain = client(programs, tmp_path, port, "cli8")
    assert plain.finish() == 1
    assert (
        "cli8 states no differential privacy, but the run admits clients only with ε at "
        "most 2 (--max-epsilon)"
    ) in plain.output
    greedy = client(programs, tmp_path, port, "cli9", "--dp-epsilon", "3")
    assert greedy.finish() == 1
    assert "cli9 states ε 3, above the most the run admits, ε 2 (--max-epsilon)" in greedy.output
    clients = [
        client(programs, tmp_path, port, "cli1", "--dp-epsilon", "1"),
        client(programs, tmp_path, port, "cli2", "--dp-epsilon", "2", "--dp-delta", "1e-6"),
    ]
    for program in [server, *clients]:
        assert program.finish() == 0, program.output
    chain_path = tmp_path / "chain.jsonl"
    blocks = load_chain(chain_path).blocks
    statements = blocks[0].run.privacy.statements
    assert blocks[0].version == 14  # format 6 (private) naming its target
    assert {n: (s.epsilon, s.delta) for n, s in statements.items()} == {
        "cli1": (1.0, 1e-5),
        "cli2": (2.0, 1e-6),
    }
    verified = run_blockchain_cli("verify", chain_path)
    assert verified.returncode == 0, verified.stdout
    assert (
        f"cli1 ε 1, δ 1e-05 ({MECHANISM}); cli2 ε 2, δ 1e-06 ({MECHANISM}) (the run admits "
        "at most ε 2)"
    ) in verified.stdout
    # Each client kept its release beside its key, private to it; with those alone, and rows
    # that are noise, the simulation makes the run's models bit for bit.
    schema = load_schema(SCHEMA)
    releases, stand_ins = {}, {}
    for i, (name, epsilon, delta) in enumerate((("cli1", 1.0, 1e-5), ("cli2", 2.0, 1e-6))):
        path = release_path(tmp_path / "keys", name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = load_dataset(ROOT / "data" / f"client{i + 1}.csv")
        releases[name], new = load_or_release(
            path, data, target="charges", schema=schema, epsilon=epsilon, delta=delta
        )
        assert not new
        noise = np.random.default_rng(i).normal(size=data.X.shape)
        stand_ins[name] = type(data)(data.feature_names, noise, noise[:, 0])
    simulated = simulate(stand_ins, rounds=ROUNDS, run_seed=3, private=releases)
    for block, expected in zip(blocks[1:-1], simulated, strict=True):
        assert block.server_model == expected.global_model
        for name in block.cli:
            assert block.client_model[name].model == expected.client_models[name]
            assert block.client_model[name].n_samples == releases[name].n_samples
    # So do the figures each client reports: its MSE on its noisy sums, never below zero.
    metrics = pd.read_csv(tmp_path / "chain.metrics.csv")
    for row in metrics.itertuples():
        problem = LocalProblem.from_moments(releases[row.client].moments)
        received = blocks[row.round - 1].server_model
        assert row.rows == releases[row.client].n_samples
        assert row.local_mse_before == pytest.approx(problem.mse(received), rel=1e-12)
        assert 0 <= row.local_mse_after <= row.local_mse_before


def test_a_private_client_does_not_join_a_run_without_a_schema(programs, tmp_path):
    server, port = start_server(programs, tmp_path, "--rounds", "1", "--clients", "1")
    private = client(programs, tmp_path, port, "cli1", "--dp-epsilon", "1")
    assert private.finish() == 1
    assert (
        "the server's run has no schema (the server's --schema): a private client needs "
        "public bounds to clip its rows to, so it does not join"
    ) in private.output
    assert not release_path(tmp_path / "keys", "cli1").exists()
    server.process.kill()


def drop_the_statement(s: Session) -> None:
    # A genesis of a private run that records no statement for this private client.
    canonical = load_schema(SCHEMA).canonical()
    run = RunRecord(
        1, 0, public_hex(s.key), {"cli1": s.client_key}, privacy=PrivacyTerms(canonical, None, {})
    )
    s.welcome(
        make_genesis(
            initial_model=LinearModel.zeros(len(FEATURES)),
            feature_names=FEATURES,
            difficulty=8,
            run=run,
            server_key=s.key,
        )
    )


def public_genesis(s: Session) -> None:
    s.welcome(s.make_genesis())


@pytest.mark.parametrize(
    ("schema", "script", "reason"),
    [
        (
            SCHEMA.read_text().replace("bmi,15,55\n", ""),
            None,
            "the schema's columns differ from the data's: missing 'bmi'",
        ),
        (
            load_schema(SCHEMA).canonical(),
            drop_the_statement,
            "the genesis records no privacy statement for this private client",
        ),
        (
            load_schema(SCHEMA).canonical(),
            public_genesis,
            "the genesis records no privacy statement for this private client",
        ),
        # Bounds so wide that the sums in data units overflow: refused, not a crash.
        (
            Schema(dict.fromkeys(load_schema(SCHEMA).bounds, (-1e200, 1e200))).canonical(),
            None,
            "the server's schema is of no use to this client: the moments must be finite",
        ),
    ],
)
def test_a_private_client_refuses_a_server_that_misstates_the_run(
    programs, tmp_path, schema, script, reason
):
    server = FakeServer(script or (lambda s: None), schema=schema)
    private = start_client(programs, tmp_path, server.port, "--dp-epsilon", "1")
    assert private.finish() == 1
    assert reason in private.output
    assert "Traceback" not in private.output
    server.finish()


def test_a_server_that_changes_its_schema_gets_no_second_release(programs, tmp_path):
    # Each release spends ε afresh, and averaging two of the same rows halves their noise: a
    # server must not get another by sending other bounds, or the same ones in another order.
    schema = load_schema(SCHEMA)
    kept = tmp_path / "keys"

    def join(schema_text):
        server = FakeServer(public_genesis, schema=schema_text)
        private = start_client(programs, tmp_path, server.port, "--dp-epsilon", "1")
        assert private.finish() == 1  # at the public genesis, after the release
        server.finish()
        return private.output

    assert "released now" in join(schema.canonical())
    made = {path: path.read_bytes() for path in kept.glob("cli1-release*")}
    assert len(made) == 1
    reordered = Schema(dict(reversed(schema.bounds.items())))
    assert "released before" in join(reordered.canonical())
    wider = Schema(schema.bounds | {"age": (18.0, 66.0)})
    output = join(wider.canonical())
    assert "this client released its rows' sums under another schema" in output
    assert "remove keys/cli1-release.json to make one" in output
    assert {path: path.read_bytes() for path in kept.glob("cli1-release*")} == made
