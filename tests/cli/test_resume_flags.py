"""`server.py --resume --chain PATH`: the run's settings come from the chain's genesis, and only a
flag given that differs from it is refused, by name. In process, on a finished chain, so the
server stops after checking (a run still open would wait for its clients)."""

import argparse

import pytest
from chain_helpers import SERVER_KEY, build_chain
from in_process import run_main
from raw_peers import write_key

from fedchain.cli.arguments import given_flags
from fedchain.ledger.block import TargetRecord
from fedchain.ledger.store import ChainWriter


def write_finished_run(folder, target=None):
    """A complete chain of 2 rounds at 8 bits, seed 0, 2 clients (quorum 1), and its server's
    key: none of it the server's defaults (5 rounds, 18 bits, quorum 2)."""
    chain = folder / "chain.jsonl"
    with ChainWriter(chain) as writer:
        for block in build_chain(rounds=2, closed=True, target=target):
            writer.append(block)
    key = folder / "server.key"
    write_key(key, SERVER_KEY)
    return chain, key


@pytest.fixture
def finished_run(tmp_path):
    return write_finished_run(tmp_path)


@pytest.fixture
def finished_targeted_run(tmp_path):
    """The same, naming its target: 'y', in no stated unit (not the server's default)."""
    return write_finished_run(tmp_path, TargetRecord("y", ""))


def test_resume_with_the_chain_alone_takes_the_runs_settings_from_its_genesis(finished_run):
    chain, key = finished_run
    result = run_main("server.py", "--resume", "--chain", chain, "--key", key)
    assert result.returncode == 0, result.stderr
    assert "is already complete; nothing to resume" in result.stdout
    assert "genesis records" not in result.stderr


def test_resume_refuses_only_the_flags_given_that_differ(finished_run):
    chain, key = finished_run
    before = chain.read_bytes()
    # --seed 0 matches; --difficulty 18 is the default, but given, it is the user's word.
    given = ("--rounds", "9", "--seed", "0", "--difficulty", "18")
    result = run_main("server.py", "--resume", "--chain", chain, "--key", key, *given)
    assert result.returncode == 2
    assert "--rounds is 9, but the chain's genesis records 2" in result.stderr
    assert "--difficulty is 18, but the chain's genesis records 8" in result.stderr
    for not_given in ("--seed", "--clients", "--min-clients", "--aggregation"):
        assert f"{not_given} is" not in result.stderr
    assert chain.read_bytes() == before


def test_resume_takes_the_target_from_the_genesis(finished_targeted_run):
    chain, key = finished_targeted_run
    # No --test: the bundled file has no column 'y'; the target and its unit are the chain's.
    result = run_main("server.py", "--resume", "--chain", chain, "--key", key, "--test", "")
    assert result.returncode == 0, result.stderr
    assert "is already complete; nothing to resume" in result.stdout


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        (("--target", "charges"), "--target is 'charges', but the chain's genesis records 'y'"),
        (
            ("--target-unit", "ln(USD per year)"),
            "--target-unit is 'ln(USD per year)', but the chain's genesis records ''",
        ),
    ],
)
def test_resume_refuses_a_typed_target_or_unit_that_differs(finished_targeted_run, given, refusal):
    chain, key = finished_targeted_run
    before = chain.read_bytes()
    result = run_main("server.py", "--resume", "--chain", chain, "--key", key, *given)
    assert result.returncode == 2
    assert refusal in result.stderr
    assert chain.read_bytes() == before


def test_resume_refuses_a_unit_for_a_chain_that_records_no_target(finished_run):
    chain, key = finished_run
    result = run_main("server.py", "--resume", "--chain", chain, "--key", key, "--target-unit", "")
    assert result.returncode == 2
    assert "--target-unit is given, but the chain's genesis records no target" in result.stderr


def test_given_flags_are_those_named_whatever_their_values():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    argv = ["--rounds", "5", "--resume"]
    assert given_flags(parser, argv) == {"rounds", "resume"}
    assert parser.parse_args([]).rounds == 5  # the defaults are put back
