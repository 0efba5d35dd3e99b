"""Chains forged without the server's key, put to every command that reads a chain: one stripped
to unsigned format 1 and re-mined, and one re-signed from the genesis on by a forger's own server
and client keys. Both verify as chains; neither may pass as the run's.

The commands run as real programs where one run says it; sweeps over every command call each
program's main(argv) in this process, to spare a second of start-up a call."""

import json
import warnings

import pytest
from chain_helpers import FEATURES, SERVER_KEY, build_chain, fixed_key
from in_process import run_main
from processes import run_script

from fedchain.learning.aggregation import fedavg
from fedchain.ledger.block import FORMAT_UNSIGNED, ZERO_HASH, Block, ClientUpdate
from fedchain.ledger.chain import UntrustedChain, verify_chain
from fedchain.ledger.mining import seal
from fedchain.ledger.store import ChainWriter
from fedchain.results import UnpinnedChainWarning, load_global_models, load_model, load_rounds
from fedchain.trust.keys import public_hex

HONEST_KEY = public_hex(SERVER_KEY)
FORGER_SERVER = fixed_key("the forger's server")
FORGER_CLIENTS = {name: fixed_key(f"the forger's {name}") for name in ("cli1", "cli2")}
FORGER_KEY = public_hex(FORGER_SERVER)
EXIT_REFUSED = 6


def write_chain(path, blocks):
    with ChainWriter(path) as writer:
        for block in blocks:
            writer.append(block)
    return path


def stripped_to_format_1(blocks: list[Block], shift: float = 1.0) -> list[Block]:
    """BLOCKS' rounds as an unsigned format-1 chain, each client's model moved by SHIFT and the
    average made again, every block re-mined at the run's difficulty: what anyone can make."""
    forged = []
    for block in blocks:
        if block.index and not block.cli:
            continue  # format 1 has no closing block
        updates = {
            name: ClientUpdate(type(u.model)(u.model.weights + shift, u.model.bias), u.n_samples)
            for name, u in block.client_model.items()
        }
        server_model = (
            fedavg([(updates[n].model, updates[n].n_samples) for n in block.cli])
            if block.cli
            else block.server_model
        )
        block = Block(
            index=block.index,
            timestamp=block.timestamp,
            previous_hash=forged[-1].hash if forged else ZERO_HASH,
            difficulty=block.difficulty,
            feature_names=block.feature_names,
            aggregation=block.aggregation,
            cli=block.cli,
            client_model=updates,
            server_model=server_model,
            version=FORMAT_UNSIGNED,
        )
        forged.append(seal(block))
    return forged


@pytest.fixture
def honest(tmp_path):
    return write_chain(tmp_path / "honest.jsonl", build_chain(rounds=3, closed=True))


@pytest.fixture
def unsigned(tmp_path):
    forged = stripped_to_format_1(build_chain(rounds=3, closed=True))
    verify_chain(forged)  # a chain that verifies: only its being unsigned gives it away
    return write_chain(tmp_path / "unsigned.jsonl", forged)


@pytest.fixture
def rekeyed(tmp_path):
    forged = build_chain(
        rounds=3, closed=True, server_key=FORGER_SERVER, client_keys=FORGER_CLIENTS
    )
    verify_chain(forged)  # every signature holds: the forger's own keys made them
    return write_chain(tmp_path / "rekeyed.jsonl", forged)


def readers(chain, tmp_path) -> dict[str, tuple]:
    """Every command that reads a chain, on CHAIN, writing anything it writes under TMP_PATH."""
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join([*FEATURES, "charges"]) + "\n40,30,1,9.5\n25,22,0,8.1\n")
    return {
        "verify": ("blockchain.py", "verify", chain),
        "show": ("blockchain.py", "show", chain),
        "export": ("blockchain.py", "export", chain, "-o", tmp_path / "model.json"),
        "plot": ("blockchain.py", "plot", chain, "-o", tmp_path / "figure.png"),
        "report": ("blockchain.py", "report", chain, "--test", rows, "-o", tmp_path / "run.html"),
        "compare": ("blockchain.py", "compare", chain, chain),
        "model.py": ("model.py", chain),
        "model.py predict": ("model.py", "predict", "--chain", chain, "--data", rows),
        "model.py score": ("model.py", "score", "--chain", chain, "--data", rows),
    }


def test_a_chain_stripped_to_format_1_is_refused_by_every_reader_unless_allowed(unsigned, tmp_path):
    hands_out = run_main(
        "model.py",
        "predict",
        "--chain",
        unsigned,
        "--data",
        readers(unsigned, tmp_path)["model.py score"][-1],
    )
    assert hands_out.returncode == EXIT_REFUSED and hands_out.stdout == "", hands_out.stdout
    for name, (script, *args) in readers(unsigned, tmp_path).items():
        result = run_main(script, *args)
        assert result.returncode == EXIT_REFUSED, (name, result.stdout, result.stderr)
        said = result.stdout + result.stderr
        assert "block 0: the chain is unsigned (format 1): anyone could have made it" in said
        assert "--allow-unsigned" in said, name
        assert not (tmp_path / "model.json").exists() and not (tmp_path / "figure.png").exists()
        assert not (tmp_path / "run.html").exists()
    for name, (script, *args) in readers(unsigned, tmp_path).items():
        if name == "plot":  # its test rows have other columns: drawing is tested elsewhere
            continue
        result = run_main(script, *args, "--allow-unsigned")
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        note = "note: the chain is unsigned (format 1): anyone could have made it\n"
        assert result.stderr.count(note) == 1, (name, result.stderr)


def test_a_chain_rekeyed_by_a_forger_is_refused_naming_both_keys(rekeyed, honest, tmp_path):
    for name, (script, *args) in readers(rekeyed, tmp_path).items():
        result = run_main(script, *args, "--server-key", HONEST_KEY)
        assert result.returncode == EXIT_REFUSED, (name, result.stdout, result.stderr)
        assert (
            f"block 0: the chain is signed by the server key {FORGER_KEY}, not by the pinned "
            f"key {HONEST_KEY}"
        ) in result.stdout + result.stderr, name
        assert not (tmp_path / "model.json").exists()
    # --require-signed, all that could be asked before, let it through; it still does no harm.
    result = run_main(
        "blockchain.py", "verify", rekeyed, "--require-signed", "--server-key", HONEST_KEY
    )
    assert result.returncode == EXIT_REFUSED
    # The honest chain, pinned to its own key, passes every reader without a note.
    for name, (script, *args) in readers(honest, tmp_path).items():
        if name == "plot":
            continue
        result = run_main(script, *args, "--server-key", HONEST_KEY.upper())
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert "note:" not in result.stderr, name


def test_with_no_key_pinned_a_reader_says_so_on_one_line_and_how_to_pin(rekeyed):
    # A real process: the note goes to its standard error, the verdict to its standard output.
    result = run_script("blockchain.py", "verify", rekeyed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("valid: 5 blocks")
    assert result.stderr == (
        "note: no server key pinned: anyone holding some key could have made this chain (it "
        f"names the server key {FORGER_KEY}); to pin the key you expect: --server-key HEX or "
        "--known-servers FILE\n"
    )
    exported = run_main("blockchain.py", "export", rekeyed)
    assert exported.returncode == 0 and json.loads(exported.stdout)["round"] == 3
    assert exported.stderr.count("\n") == 1 and "no server key pinned" in exported.stderr


def test_known_servers_pins_any_key_the_file_records(rekeyed, honest, tmp_path):
    known = tmp_path / "known_servers"
    known.write_text(
        f"# as a client records them\n127.0.0.1:10000 {HONEST_KEY}\nexample.org:9000 {'ab' * 32}\n"
    )
    refused = run_main("blockchain.py", "verify", rekeyed, "--known-servers", known)
    assert refused.returncode == EXIT_REFUSED
    assert refused.stdout.strip() == (
        f"refused: block 0: the chain is signed by the server key {FORGER_KEY}, not by a key "
        f"{known} records: {HONEST_KEY} (127.0.0.1:10000), {'ab' * 32} (example.org:9000)"
    )
    for script, *args in (("blockchain.py", "verify", honest), ("model.py", honest)):
        accepted = run_main(script, *args, "--known-servers", known)
        assert accepted.returncode == 0 and accepted.stderr == "", accepted.stderr
    missing = run_main("model.py", honest, "--known-servers", tmp_path / "nothing")
    assert missing.returncode == 2 and "cannot read " in missing.stderr
    known.chmod(0o666)  # the clients' own rule for the file holds here too
    writable = run_main("blockchain.py", "verify", honest, "--known-servers", known)
    assert writable.returncode == 2 and "can be written by others" in writable.stderr
    known.chmod(0o600)
    known.write_text("127.0.0.1:10000 not-a-key\n")
    bad = run_main("blockchain.py", "verify", honest, "--known-servers", known)
    assert bad.returncode == 2 and f"{known}: line 1: " in bad.stderr
    both = run_main(
        "blockchain.py", "verify", honest, "--server-key", HONEST_KEY, "--known-servers", known
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_the_results_api_refuses_forged_chains_and_warns_when_nothing_is_pinned(
    unsigned, rekeyed, honest, tmp_path
):
    for load in (load_rounds, load_global_models, load_model):
        with pytest.raises(UntrustedChain, match=r"unsigned .*allow_unsigned=True"):
            load(unsigned)
        with pytest.raises(UntrustedChain, match=f"{FORGER_KEY}, not by the pinned key"):
            load(rekeyed, server_key=HONEST_KEY)
        with pytest.warns(UnpinnedChainWarning, match=rf"{FORGER_KEY}.*server_key=HEX"):
            load(rekeyed)
        with pytest.warns(UnpinnedChainWarning, match="unsigned"):
            load(unsigned, allow_unsigned=True)
    known = tmp_path / "known_servers"
    known.write_text(f"127.0.0.1:10000 {HONEST_KEY}\n")
    with pytest.raises(UntrustedChain, match="not by a key"):
        load_model(rekeyed, known_servers=known)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pinned: no warning
        model = load_model(honest, known_servers=known)
        assert load_model(honest, server_key=HONEST_KEY).block_hash == model.block_hash
    assert model.feature_names == FEATURES


def test_a_model_file_is_not_taken_with_flags_that_only_a_chain_can_meet(honest, tmp_path):
    # A model file records no work and no signature: a flag asking for them there would be
    # a check that silently never ran.
    exported = run_main("blockchain.py", "export", honest, "-o", tmp_path / "model.json")
    assert exported.returncode == 0, exported.stderr
    rows = readers(honest, tmp_path)["model.py score"][-1]
    for flags in (["--server-key", HONEST_KEY], ["--allow-unsigned"], ["--min-difficulty", "20"]):
        result = run_main(
            "model.py", "predict", "--model", tmp_path / "model.json", "--data", rows, *flags
        )
        assert result.returncode == 2 and result.stdout == "", (flags, result.stdout)
        assert "a model file is taken as it is" in result.stderr, flags
