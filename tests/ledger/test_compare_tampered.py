"""`compare` verifies both copies before comparing them, and compares every field of every block,
not only the stored hashes: a copy altered after it was sealed, whatever field is changed and
however the stored hash is left, never passes for the same copy."""

import json
import re

import pytest
from chain_helpers import build_chain
from in_process import run_main

from fedchain.ledger.compare import compare_chains
from fedchain.ledger.store import ChainFileError, block_to_json, load_chain

BLOCKS = build_chain(rounds=5, closed=True)  # 7 blocks, as in the issue
TAMPERED = 3  # a round block: both clients' signed updates, their attestations, the signature


def tamperings(value, path=""):
    """(path, changed value) for every part of the JSON VALUE: each scalar changed, each object's
    first key renamed (an entry added to an empty one), an empty list given an element."""
    if isinstance(value, dict):
        if value:
            first = next(iter(value))
            yield (
                f"{path}{{key {first}}}",
                {f"{first}x" if k == first else k: v for k, v in value.items()},
            )
        else:
            yield f"{path}{{added}}", {"cli1": "x"}
        for key, item in value.items():
            for where, changed in tamperings(item, f"{path}.{key}"):
                yield where, {**value, key: changed}
    elif isinstance(value, list):
        if not value:
            yield f"{path}[added]", [0.5]
        for i, item in enumerate(value):
            for where, changed in tamperings(item, f"{path}[{i}]"):
                yield where, [*value[:i], changed, *value[i + 1 :]]
    elif isinstance(value, bool) or value is None:
        yield path, 0
    elif isinstance(value, int):
        yield path, value + 1
    elif isinstance(value, float):
        yield path, value + 0.001
    elif all(c in "0123456789abcdef" for c in value) and len(value) >= 32:  # a hash or signature
        yield path, value[:-1] + ("0" if value[-1] != "0" else "1")
    else:
        yield path, value + "x"


RECORD = json.loads(block_to_json(BLOCKS[TAMPERED]))
CASES = dict(tamperings(RECORD))
# The sweep reaches every field of the block: index, client_model, signatures, hash, …
assert {re.split(r"[.\[{]", where.lstrip("."))[0] for where in CASES} - {""} == set(RECORD)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("where", sorted(CASES))
def test_compare_never_calls_a_tampered_copy_the_same(where, tmp_path):
    honest = [block_to_json(block) for block in BLOCKS]
    tampered = honest.copy()
    tampered[TAMPERED] = json.dumps(CASES[where], ensure_ascii=False, separators=(",", ":"))
    assert tampered[TAMPERED] != honest[TAMPERED]
    a = write(tmp_path / "a.jsonl", honest)
    for b in (
        write(tmp_path / "b.jsonl", tampered),
        write(tmp_path / "prefix.jsonl", tampered[: TAMPERED + 1]),  # a prefix, had it held
    ):
        for first, second in ((a, b), (b, a)):
            result = run_main("blockchain.py", "compare", first, second)
            assert result.returncode == 1, (where, result.stdout, result.stderr)
            assert result.stdout == ""
            assert result.stderr.startswith(f"error: {b} does not verify: "), result.stderr
            assert "block 3" in result.stderr, result.stderr
        # The comparison alone, on the blocks as read, finds them apart at block 3 too.
        try:
            blocks = load_chain(b).blocks
        except ChainFileError:
            continue  # a value the file format itself refuses
        for comparison in (compare_chains(BLOCKS, blocks), compare_chains(blocks, BLOCKS)):
            assert comparison.index == TAMPERED and not comparison.equivocation, where


def test_a_weight_changed_under_its_old_hash_is_caught(tmp_path):
    """The issue's case, as a user runs it: one weight of block 3 moved by 0.001, the stored
    hash left alone."""
    honest = [block_to_json(block) for block in BLOCKS]
    record = json.loads(honest[TAMPERED])
    record["client_model"]["cli1"]["weights"][0] += 0.001
    tampered = [
        *honest[:TAMPERED],
        json.dumps(record, separators=(",", ":")),
        *honest[TAMPERED + 1 :],
    ]
    a, b = write(tmp_path / "a.jsonl", honest), write(tmp_path / "b.jsonl", tampered)
    result = run_main("blockchain.py", "compare", a, b)
    assert result.returncode == 1 and "the copies are the same" not in result.stdout
    assert result.stderr.startswith(f"error: {b} does not verify: block 3: ")
    comparison = compare_chains(BLOCKS, load_chain(b).blocks)
    assert comparison.index == TAMPERED
    assert "differ under the same stored hash" in comparison.summary
    same = run_main("blockchain.py", "compare", a, write(tmp_path / "c.jsonl", honest))
    assert same.returncode == 0 and same.stdout == "the copies are the same 7 blocks\n"
