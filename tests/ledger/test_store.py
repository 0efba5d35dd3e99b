"""Chain files: exact round trips, crash recovery of a torn last line, and strict reading."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from chain_helpers import (
    SERVER_KEY,
    build_chain,
    fixed_key,
    genesis_for,
    reseal,
    run_record,
    signed_update,
)
from in_process import run_main

from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.chain import continue_chain, make_genesis, make_round_block, verify_chain
from fedchain.ledger.store import (
    ChainFileError,
    ChainWriter,
    block_from_json,
    block_to_json,
    load_chain,
    updates_from_json,
    updates_to_json,
)
from fedchain.ledger.verification import ChainError


def write_chain(path: Path, blocks: list) -> Path:
    with ChainWriter(path) as writer:
        for block in blocks:
            writer.append(block)
    return path


def test_blocks_round_trip_exactly(tmp_path):
    blocks = build_chain()
    loaded = load_chain(write_chain(tmp_path / "chain.jsonl", blocks))
    assert loaded.dropped_tail is None
    assert [block_to_json(b) for b in loaded.blocks] == [block_to_json(b) for b in blocks]
    verify_chain(loaded.blocks)


def test_awkward_floats_survive_storage(tmp_path):
    awkward = [-0.0, 5e-324, 1.7976931348623157e300, 0.1, 1 / 3]
    genesis = genesis_for(1, features=tuple("abcde"), initial=LinearModel(awkward, -0.0))
    update = signed_update(genesis, genesis, "cli1", LinearModel(awkward[::-1], 1e-300), 3)
    block = make_round_block(
        genesis,
        {"cli1": update},
        attestations={},
        server_key=SERVER_KEY,
        missing={"cli2": "timed out (after 60 s)"},
    )
    blocks = [genesis, block]
    loaded = load_chain(write_chain(tmp_path / "chain.jsonl", blocks)).blocks
    assert loaded[0].server_model == genesis.server_model  # bit for bit: -0.0 stays -0.0
    assert loaded[1].client_model["cli1"] == update
    verify_chain(loaded)


@pytest.mark.parametrize("cut", [1, 2, 40, -2])
def test_a_torn_last_line_is_dropped_and_reported(tmp_path, cut):
    path = write_chain(tmp_path / "chain.jsonl", build_chain())
    data = path.read_bytes()
    last_line = len(data.splitlines()[-1]) + 1
    keep = len(data) - last_line + (cut if cut > 0 else last_line + cut)
    path.write_bytes(data[:keep])  # a crash part way through writing the last block
    loaded = load_chain(path)
    assert len(loaded.blocks) == 3
    assert "line 4" in loaded.dropped_tail
    verify_chain(loaded.blocks)
    result = run_main("blockchain.py", "verify", path)
    assert result.returncode == 3  # what is left verifies, but the run it records is unfinished
    assert result.stdout.splitlines()[-1] == (
        "incomplete: 3 blocks verify, but the run planned 3 rounds and holds 2"
    )
    assert "unfinished block dropped" in result.stderr


def test_a_whole_last_block_without_its_newline_is_kept(tmp_path):
    path = write_chain(tmp_path / "chain.jsonl", build_chain())
    path.write_bytes(path.read_bytes()[:-1])
    loaded = load_chain(path)
    assert len(loaded.blocks) == 4 and loaded.dropped_tail is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda line: line[: len(line) // 2],  # torn, but not at the end
        lambda line: b"garbage",
        lambda line: b"",
        lambda line: line.replace(b'"nonce":', b'"nonce":"').replace(b',"hash"', b'","hash"'),
    ],
)
def test_damage_before_the_last_line_is_refused_naming_the_block(tmp_path, damage):
    path = write_chain(tmp_path / "chain.jsonl", build_chain())
    lines = path.read_bytes().split(b"\n")
    lines[1] = damage(lines[1])
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ChainFileError, match=r"line 2 \(block 1\)"):
        load_chain(path)
    result = run_main("blockchain.py", "verify", path)
    assert result.returncode == 1
    assert "block 1" in result.stdout


def record_of(block) -> dict:
    return json.loads(block_to_json(block))


@pytest.mark.parametrize(
    ("text_change", "expected"),
    [
        (lambda t: t.replace('"bias":0.0', '"bias":0'), "must be a JSON float"),
        (lambda t: t.replace('"bias":0.0', '"bias":NaN'), "NaN is not a finite number"),
        (lambda t: t.replace('"bias":0.0', '"bias":1e999'), "finite"),
        (lambda t: t.replace('"nonce":', '"extra":1,"nonce":'), "unknown field(s) 'extra'"),
        (lambda t: t.replace('"index":0,', ""), "lacks index"),
        (lambda t: t.replace('"index":0,', '"index":0,"index":0,'), "repeats a key"),
        (lambda t: t.replace('"difficulty":8', '"difficulty":true'), "integer"),
        (lambda t: t.replace('"fedavg"', '"\\ud800"'), "printable"),
    ],
)
def test_reading_is_strict(text_change, expected):
    text = block_to_json(build_chain(rounds=1)[0])
    changed = text_change(text)
    assert changed != text
    with pytest.raises((ValueError, TypeError)) as caught:
        block_from_json(changed)
    assert expected in str(caught.value)


def test_a_writer_never_overwrites_an_existing_chain(tmp_path):
    path = write_chain(tmp_path / "chain.jsonl", build_chain(rounds=1))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        ChainWriter(path)
    assert path.read_bytes() == before


def test_show_prints_each_block_for_a_person(tmp_path):
    blocks = build_chain(rounds=2, closed=True)
    path = write_chain(tmp_path / "chain.jsonl", blocks)
    result = run_main("blockchain.py", "show", path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "block 0 (genesis)" in out and "block 2 (round)" in out
    assert "cli1 (535 rows), cli2 (97 rows)" in out
    assert f"nonce {blocks[2].nonce}" in out and blocks[2].hash[:16] in out
    assert "server model: bias=" in out and "age=" in out
    assert "block 1: updates signed by cli1, cli2; attested by cli1, cli2" in out
    assert out.strip().endswith("valid: 4 blocks; the run is complete (2 of 2 rounds)")


def test_cli_reports_tampering_and_unreadable_files(tmp_path):
    blocks = build_chain()
    blocks[2] = reseal(blocks[2], timestamp=blocks[2].timestamp + 1)
    path = write_chain(tmp_path / "chain.jsonl", blocks)
    result = run_main("blockchain.py", "verify", path)
    assert result.returncode == 1
    assert result.stdout.startswith("invalid: block 3: previous_hash")
    missing = run_main("blockchain.py", "verify", tmp_path / "absent.jsonl")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


@pytest.mark.parametrize(
    "tail",
    [
        b'{"totally": "not a block"}',
        b"[" * 200_000,
        b"garbage",
        b'{"version":1}',
        b'{"version":1}HELLO',
    ],
)
def test_a_last_line_that_is_not_a_cut_off_block_is_damage_not_a_tear(tmp_path, tail):
    path = write_chain(tmp_path / "chain.jsonl", build_chain(rounds=1))
    path.write_bytes(path.read_bytes() + tail)
    with pytest.raises(ChainFileError, match=r"line 3 \(block 2\)"):
        load_chain(path)
    result = run_main("blockchain.py", "verify", path)
    assert result.returncode == 1 and "block 2" in result.stdout
    assert "Traceback" not in result.stderr


def test_verify_can_require_a_minimum_difficulty(tmp_path):
    path = write_chain(tmp_path / "chain.jsonl", build_chain(rounds=1, closed=True))  # 8 bits
    assert run_main("blockchain.py", "verify", path, "--min-difficulty", "8").returncode == 0
    result = run_main("blockchain.py", "verify", path, "--min-difficulty", "9")
    assert result.returncode == 1
    assert result.stdout.strip() == "invalid: block 0: difficulty 8 is below the required 9"


def test_a_tear_inside_a_multibyte_character_is_still_a_tear(tmp_path):
    key = fixed_key("clié")
    genesis = make_genesis(
        initial_model=LinearModel.zeros(1),
        feature_names=["é"],
        difficulty=4,
        run=run_record(1, {"clié": key}),
        server_key=SERVER_KEY,
    )
    update = signed_update(genesis, genesis, "clié", LinearModel([1.0], 0.0), 3, key=key)
    block = make_round_block(genesis, {"clié": update}, attestations={}, server_key=SERVER_KEY)
    path = write_chain(tmp_path / "chain.jsonl", [genesis, block])
    data = path.read_bytes()
    cut = data.rindex("clié".encode()) + len("cli") + 1  # between the two bytes of "é"
    path.write_bytes(data[:cut])
    loaded = load_chain(path)
    assert len(loaded.blocks) == 1 and "line 2" in loaded.dropped_tail


def test_a_whole_last_line_damaged_in_the_middle_is_not_taken_for_a_tear(tmp_path):
    path = write_chain(tmp_path / "chain.jsonl", build_chain(rounds=1))
    data = bytearray(path.read_bytes()[:-1])  # no newline at the end, as after a crash
    middle = data.rindex(b'"timestamp":') + len(b'"timestamp":') + 3
    data[middle : middle + 1] = b"Z"
    path.write_bytes(bytes(data))
    with pytest.raises(ChainFileError, match=r"line 2 \(block 1\)"):
        load_chain(path)


def test_a_chain_file_appears_only_with_its_first_block(tmp_path):
    # A crash between making the file and writing the genesis must not leave an empty file
    # that a restart would refuse as "already exists": the file appears whole or not at all.
    path = tmp_path / "chain.jsonl"
    blocks = build_chain(rounds=1)
    writer = ChainWriter(path)
    assert not path.exists()
    writer.append(blocks[0])
    assert path.read_text().count("\n") == 1
    writer.append(blocks[1])
    writer.close()
    assert [b.hash for b in load_chain(path).blocks] == [b.hash for b in blocks]
    assert [p.name for p in tmp_path.iterdir()] == ["chain.jsonl"]  # no temporary left


def test_a_chain_file_made_by_someone_else_meanwhile_is_never_overwritten(tmp_path):
    path = tmp_path / "chain.jsonl"
    writer = ChainWriter(path)
    path.write_text("precious\n")  # another program took the name after we checked
    with pytest.raises(FileExistsError, match="already exists"):
        writer.append(build_chain(rounds=1)[0])
    assert path.read_text() == "precious\n"
    with pytest.raises(FileExistsError):
        ChainWriter(path)


def test_what_a_crafted_file_holds_is_echoed_short(tmp_path):
    path = write_chain(tmp_path / "chain.jsonl", build_chain(rounds=1))
    record = json.loads(path.read_text().splitlines()[0])
    record["x" * 1_000_000] = 1
    path.write_text(json.dumps(record) + "\n")
    result = run_main("blockchain.py", "verify", path)
    assert result.returncode == 1 and "unknown field(s)" in result.stdout
    assert len(result.stdout) < 2000


@pytest.mark.parametrize("ending", ["torn last line", "no newline after the last block", "whole"])
def test_a_chain_is_continued_after_its_whole_blocks(tmp_path, ending):
    # A restarted server or client goes on with its file: a torn line is cut off first, and a
    # whole last block written without its newline gets one, so the next block is a line.
    blocks = build_chain(rounds=2)
    path = write_chain(tmp_path / "chain.jsonl", blocks[:2])
    data = path.read_bytes()
    if ending == "torn last line":
        path.write_bytes(data + block_to_json(blocks[2]).encode()[:40])
    elif ending == "no newline after the last block":
        path.write_bytes(data[:-1])
    chain, dropped = continue_chain(path)
    assert (dropped is not None) == (ending == "torn last line")
    assert [b.hash for b in chain.blocks] == [b.hash for b in blocks[:2]]
    chain.append(blocks[2])
    chain.store.close()
    assert path.read_bytes() == data + (block_to_json(blocks[2]) + "\n").encode()
    assert [b.hash for b in load_chain(path).blocks] == [b.hash for b in blocks[:3]]


def test_a_chain_that_does_not_verify_is_not_continued(tmp_path):
    blocks = build_chain(rounds=2)
    path = write_chain(tmp_path / "chain.jsonl", [blocks[0], blocks[2]])  # block 1 left out
    before = path.read_bytes()
    with pytest.raises(ChainError, match="block 1"):
        continue_chain(path)
    assert path.read_bytes() == before


def test_a_chain_refused_by_its_caller_is_left_as_it_is(tmp_path):
    # A client refusing another run's replica, or a server refusing to resume with other
    # flags, must not have cut the file's torn last line (or anything) first.
    blocks = build_chain(rounds=2)
    path = write_chain(tmp_path / "chain.jsonl", blocks[:2])
    path.write_bytes(path.read_bytes() + block_to_json(blocks[2]).encode()[:40])
    before = path.read_bytes()

    def refuse(chain) -> None:
        raise LookupError("not this run")

    with pytest.raises(LookupError, match="not this run"):
        continue_chain(path, accept=refuse)
    assert path.read_bytes() == before


def test_a_rounds_updates_round_trip_in_order_for_a_probe():
    genesis = genesis_for(1)
    gradient = (0.1, -0.0, 5e-324, 1e100)
    updates = {
        name: replace(
            signed_update(
                genesis,
                genesis,
                name,
                LinearModel([0.1, -0.0, 1e-300], 2.5),
                rows,
                key=fixed_key(name),
            ),
            gradient=gradient,
        )
        for name, rows in (("zed", 3), ("cli1", 535))  # not in name order: the order is kept
    }
    parsed = updates_from_json(updates_to_json(updates))
    assert parsed == updates and list(parsed) == ["zed", "cli1"]
    text = updates_to_json(updates)
    for bad, reason in [
        ("[]", "updates must be a JSON dict"),
        ('{"a":{},"a":{}}', "repeats a key"),
        ('{" a":{}}', "no spaces around it"),
        (text.replace('"n_samples":3', '"n_samples":3.0'), "n_samples must be a positive integer"),
        (text.replace('"weights":[0.1', '"weights":[NaN'), "NaN is not a finite number"),
        (text.replace(',"probe_signature":""', ""), "lacks probe_signature"),
    ]:
        with pytest.raises((ValueError, TypeError), match=reason):
            updates_from_json(bad)
