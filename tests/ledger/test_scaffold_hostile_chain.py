"""A scaffold chain made or edited by someone hostile: whatever a format-4 block holds, verifying
it ends in a verdict (ChainError, or the command's one line), never a traceback."""

import json
import time
from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import FEATURES, TRAINING, reseal
from in_process import run_main
from scaffold_chains import KEYS, NAMES, build, genesis

from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block, ClientUpdate
from fedchain.ledger.chain import verify_chain
from fedchain.ledger.correction import probe_point
from fedchain.ledger.signatures import probe_message, sign_hex, update_message
from fedchain.ledger.store import block_to_json
from fedchain.ledger.verification import ChainError

SIZE = len(FEATURES) + 1
BIG = 1e308  # finite, and allowed in a chain file (the wire stops at 1e100)

# Each client's gradients, at the start and at the candidate: all signed by the clients' own
# keys, as a forger who runs every party can sign them.
HUGE_GRADIENTS = {
    "every sum overflows": lambda i: ((BIG,) * SIZE, (BIG,) * SIZE),
    "sums of opposite infinities": lambda i: (((-1) ** i * BIG,) * SIZE, (BIG,) * SIZE),
    "a change past float64": lambda i: ((-BIG / 3,) * SIZE, (BIG / 3,) * SIZE),
    "a curvature past float64": lambda i: ((0.0,) * SIZE, (BIG / 2,) * SIZE),
}


def forged_round(first: Block, at_start, at_candidate, n_samples: int = 1) -> Block:
    """Round 1 of FIRST's run with the given gradients, every signature in it valid, and the
    server's model left where it was (the step cannot be worked out, so nothing can match)."""
    updates = {}
    for i, name in enumerate(NAMES):
        model = LinearModel(np.full(len(FEATURES), float(i + 1)), 0.0)
        unsigned = ClientUpdate(model, n_samples, training=TRAINING, gradient=at_start(i))
        message = update_message(
            genesis_hash=first.hash, index=1, previous_hash=first.hash, name=name, update=unsigned
        )
        updates[name] = replace(unsigned, signature=sign_hex(KEYS[name], message))
    candidate = probe_point(NAMES, updates)
    for i, name in enumerate(NAMES):
        message = probe_message(
            genesis_hash=first.hash,
            index=1,
            previous_hash=first.hash,
            name=name,
            candidate=candidate,
            gradient=at_candidate(i),
        )
        updates[name] = replace(
            updates[name],
            probe_gradient=at_candidate(i),
            probe_signature=sign_hex(KEYS[name], message),
        )
    block = Block(
        index=1,
        timestamp=time.time(),
        previous_hash=first.hash,
        difficulty=first.difficulty,
        feature_names=first.feature_names,
        aggregation=first.aggregation,
        cli=NAMES,
        client_model=updates,
        server_model=first.server_model,
        version=first.version,
        parameters=first.parameters,
        missing={},
    )
    return reseal(block)


@pytest.mark.parametrize("case", sorted(HUGE_GRADIENTS))
def test_gradients_too_large_to_sum_are_a_verdict_not_a_crash(case, tmp_path):
    first = genesis()
    gradients = HUGE_GRADIENTS[case]
    block = forged_round(first, lambda i: gradients(i)[0], lambda i: gradients(i)[1])
    with pytest.raises(ChainError, match="block 1: "):
        verify_chain([first, block])
    path = tmp_path / "forged.jsonl"
    path.write_text(block_to_json(first) + "\n" + block_to_json(block) + "\n")
    result = run_main("blockchain.py", "verify", path)
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert result.returncode != 0 and "invalid: block 1: " in result.stdout


# A format-4 field of block 1 edited in the file: what it becomes.
EDITS = {
    "gradient of ints": ("gradient", [0, 1, 2, 3]),
    "gradient of strings": ("gradient", ["0.0"] * SIZE),
    "gradient not a list": ("gradient", 0.0),
    "gradient null": ("gradient", None),
    "gradient nested": ("gradient", [[0.0]] * SIZE),
    "gradient empty": ("gradient", []),
    "gradient short": ("gradient", [0.0] * (SIZE - 1)),
    "gradient of booleans": ("gradient", [True] * SIZE),
    "probe gradient past float64": ("probe_gradient", ["1e999"] * SIZE),
    "probe gradient NaN": ("probe_gradient", ["NaN"] * SIZE),
    "probe signature an int": ("probe_signature", 7),
    "probe signature short": ("probe_signature", "ab"),
    "probe signature empty": ("probe_signature", ""),
    "search missing a key": ("search", {"gradient": [0.0] * SIZE}),
    "search a list": ("search", [0.0]),
    "search of ints": (
        "search",
        {
            "coefficients": [1, 0],
            "gradient": [0] * SIZE,
            "step": [0] * SIZE,
            "step_change": [0] * SIZE,
        },
    ),
    "search coefficients long": (
        "search",
        {
            "coefficients": [1.0, 0.0, 0.0],
            "gradient": [0.0] * SIZE,
            "step": [0.0] * SIZE,
            "step_change": [0.0] * SIZE,
        },
    ),
    "search with an extra key": ("search", {"extra": [0.0]}),
    "search empty": ("search", {}),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_format_4_field_is_refused_with_one_line(edit, tmp_path):
    blocks = build(rounds=2)
    lines = [json.loads(block_to_json(b)) for b in blocks]
    field, value = EDITS[edit]
    target = lines[1] if field == "search" else lines[1]["client_model"]["s1"]
    if field == "search" and edit == "search with an extra key":
        value = {**target["search"], **value}
    target[field] = value
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    for literal in ("1e999", "NaN"):  # numbers JSON writes only by hand
        text = text.replace(f'"{literal}"', literal)
    path = tmp_path / "edited.jsonl"
    path.write_text(text)
    result = run_main("blockchain.py", "verify", path)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode != 0
    assert "block 1" in result.stdout + result.stderr, result.stdout + result.stderr
