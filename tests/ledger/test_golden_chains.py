"""One short, complete chain of every block format, kept as bytes in tests/fixtures/: each still
verifies, is written back to exactly its file's bytes, and hashes to what it records, so any
change to any format's hashed or stored bytes fails here.

The chains of formats 2 to 17 were made once, by golden_chain() below (signed with the fixed keys
of chain_helpers, at the time they were made); format 1's and the format-3 Krum chain are older.
To add a format: add its chain to GOLDEN, make it once with write_golden_chain(N) and commit it.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from chain_helpers import DIFFICULTY, FEATURES, SERVER_KEY, TRAINING, fixed_key

from fedchain.learning.aggregation import (
    BYZANTINE,
    FEDAVG,
    KRUM,
    MEDIAN,
    PROXIMAL,
    SCAFFOLD,
    TRIMMED_MEAN,
)
from fedchain.learning.corrected_training import gradient
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.local_training import LocalProblem
from fedchain.learning.privacy import MECHANISM
from fedchain.learning.schema import parse_schema
from fedchain.ledger.block import (
    KNOWN_FORMATS,
    ClientUpdate,
    PrivacyTerms,
    RunRecord,
    TargetRecord,
    compute_hash,
)
from fedchain.ledger.chain import make_closing_block, make_genesis, make_round_block, verify_chain
from fedchain.ledger.correction import probe_point
from fedchain.ledger.signatures import (
    attestation_message,
    probe_message,
    sign_hex,
    sign_privacy,
    update_message,
)
from fedchain.ledger.store import block_to_json, load_chain
from fedchain.trust.keys import public_hex

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NAMES = ("g1", "g2", "g3")
KEYS = {name: fixed_key(name) for name in NAMES}
SCHEMA = parse_schema("column,low,high\nage,18,65\nbmi,15,55\nsmoker,0,1\ncharges,6.9,11.5\n")

# Each format's run: its rule, the rule's parameters, Krum's scale, whether it is private (and
# its limit on ε), and which clients take part in each round (all three, unless a round leaves
# one out, so the block records it missing).
EVERYONE, ONE_OUT = NAMES, NAMES[:2]
GOLDEN = {
    2: dict(rule=FEDAVG, rounds=(EVERYONE, ONE_OUT)),
    3: dict(rule=MEDIAN, parameters={BYZANTINE: 1.0}, rounds=(EVERYONE, EVERYONE)),
    4: dict(rule=SCAFFOLD, parameters={PROXIMAL: 0.3}, rounds=(EVERYONE, ONE_OUT)),
    5: dict(
        rule=KRUM, parameters={BYZANTINE: 0.0}, scale=(2.0, 0.25, 1.5), rounds=(EVERYONE, EVERYONE)
    ),
    6: dict(rule=FEDAVG, private=True, max_epsilon=2.0, rounds=(EVERYONE, ONE_OUT)),
    7: dict(
        rule=TRIMMED_MEAN, parameters={BYZANTINE: 1.0}, private=True, rounds=(EVERYONE, EVERYONE)
    ),
    8: dict(
        rule=SCAFFOLD,
        parameters={PROXIMAL: 0.5},
        private=True,
        max_epsilon=1.5,
        rounds=(ONE_OUT, EVERYONE),
    ),
    9: dict(rule=KRUM, parameters={BYZANTINE: 0.0}, private=True, rounds=(EVERYONE, EVERYONE)),
}
# Formats 10 to 17: the runs of their twins, 2 to 9, naming their target too.
TARGET = TargetRecord("charges", "ln(USD per year)")
GOLDEN |= {untargeted + 8: dict(spec, target=TARGET) for untargeted, spec in GOLDEN.items()}
OLDER = {"format1-chain.jsonl": 1, "format3-krum-chain.jsonl": 3}
FILES = {**{f"format{n}-chain.jsonl": n for n in GOLDEN}, **OLDER}


def rows(seed: int) -> LocalProblem:
    """A client's rows, for the gradients a scaffold update carries."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=seed, scale=1 + seed, size=(20, len(FEATURES)))
    return LocalProblem.from_data(X, X @ [1.0, -2.0, 0.5] + 3.0 + rng.normal(size=20))


PROBLEMS = {name: rows(i) for i, name in enumerate(NAMES)}


def floats(vector) -> tuple[float, ...]:
    return tuple(map(float, vector))


def privacy_terms(max_epsilon: float | None) -> PrivacyTerms:
    # With a limit every client must state its privacy; without one, g1 alone does here.
    stating = NAMES if max_epsilon is not None else NAMES[:1]
    statements = {
        name: sign_privacy(
            KEYS[name],
            server_key=public_hex(SERVER_KEY),
            name=name,
            mechanism=MECHANISM,
            epsilon=0.5 + 0.25 * i,
            delta=1e-5,
            schema_digest=SCHEMA.digest(),
        )
        for i, name in enumerate(stating)
    }
    return PrivacyTerms(SCHEMA.canonical(), max_epsilon, statements)


def signed_updates(first, previous, names, rng, scaffold: bool) -> dict[str, ClientUpdate]:
    """Each client's update for the round after PREVIOUS, signed as a real client signs it
    (and for scaffold, with its gradients and its signed answer to the round's probe)."""
    start, index = previous.server_model, previous.index + 1
    updates = {}
    for n_samples, name in enumerate(names, start=50):
        model = LinearModel(
            start.weights + rng.normal(size=len(FEATURES)), start.bias + rng.normal()
        )
        unsigned = ClientUpdate(model, n_samples, training=TRAINING)
        if scaffold:
            unsigned = replace(unsigned, gradient=floats(gradient(PROBLEMS[name], start)))
        message = update_message(
            genesis_hash=first.hash,
            index=index,
            name=name,
            previous_hash=previous.hash,
            update=unsigned,
        )
        updates[name] = replace(unsigned, signature=sign_hex(KEYS[name], message))
    if scaffold:
        candidate = probe_point(tuple(names), updates)
        for name in names:
            at = floats(gradient(PROBLEMS[name], candidate))
            message = probe_message(
                genesis_hash=first.hash,
                index=index,
                name=name,
                previous_hash=previous.hash,
                candidate=candidate,
                gradient=at,
            )
            updates[name] = replace(
                updates[name], probe_gradient=at, probe_signature=sign_hex(KEYS[name], message)
            )
    return updates


def attestations(first, block, names) -> dict[str, str]:
    message = attestation_message(genesis_hash=first.hash, block=block)
    return {name: sign_hex(KEYS[name], message) for name in names} if block.index else {}


def golden_chain(version: int) -> list:
    """A complete chain of format VERSION: genesis, two rounds and the closing block."""
    spec = GOLDEN[version]
    rule, rounds = spec["rule"], spec["rounds"]
    privacy = privacy_terms(spec.get("max_epsilon")) if spec.get("private") else None
    run = RunRecord(
        len(rounds),
        11,
        public_hex(SERVER_KEY),
        {name: public_hex(key) for name, key in KEYS.items()},
        min_clients=min(map(len, rounds)),
        privacy=privacy,
        target=spec.get("target"),
    )
    blocks = [
        make_genesis(
            initial_model=LinearModel([0.5, -0.25, 1.0], 0.125),
            feature_names=FEATURES,
            difficulty=DIFFICULTY,
            run=run,
            server_key=SERVER_KEY,
            aggregation=rule,
            parameters=spec.get("parameters"),
            scale=spec.get("scale"),
        )
    ]
    rng = np.random.default_rng(version)
    for names in rounds:
        previous = blocks[-1]
        updates = signed_updates(blocks[0], previous, names, rng, rule == SCAFFOLD)
        missing = {name: "disconnected (golden)" for name in NAMES if name not in names}
        attested = attestations(blocks[0], previous, names)
        blocks.append(
            make_round_block(
                previous, updates, attestations=attested, server_key=SERVER_KEY, missing=missing
            )
        )
    attested = attestations(blocks[0], blocks[-1], NAMES)
    blocks.append(make_closing_block(blocks[-1], attestations=attested, server_key=SERVER_KEY))
    assert {block.version for block in blocks} == {version}
    return blocks


def write_golden_chain(version: int) -> Path:
    """Make format VERSION's chain and write it to its fixture file (once, when it is added)."""
    path = FIXTURES / f"format{version}-chain.jsonl"
    lines = [block_to_json(block) + "\n" for block in golden_chain(version)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_every_format_has_a_golden_chain():
    assert set(FILES.values()) == set(KNOWN_FORMATS)


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_format_s_golden_chain_verifies_and_keeps_its_bytes(name):
    path = FIXTURES / name
    raw = path.read_bytes()
    blocks = load_chain(path).blocks
    assert {block.version for block in blocks} == {FILES[name]}
    chain = verify_chain(blocks)  # every format verifies; only the CLI asks for --allow-unsigned
    assert chain.closed or FILES[name] == 1
    # Written back, byte for byte; hashed again, to what the file records.
    assert "".join(block_to_json(block) + "\n" for block in blocks).encode() == raw
    assert [compute_hash(block) for block in blocks] == [block.hash for block in blocks]


def test_the_golden_chains_record_every_field_their_format_has():
    """Each fixture exercises what its format adds, so a change to that part's bytes shows."""
    chains = {n: load_chain(FIXTURES / f"format{n}-chain.jsonl").blocks for n in GOLDEN}
    for n, blocks in chains.items():
        spec, (genesis, first, second, closing) = GOLDEN[n], blocks
        assert genesis.run is not None and closing.attestations and second.attestations
        assert bool(first.missing or second.missing) == (ONE_OUT in spec["rounds"])
        assert (genesis.run.privacy is not None) == (n % 8 in (6, 7, 0, 1))
        assert genesis.run.target == spec.get("target")
        layout = genesis.layout
        if layout in (3, 5):
            assert first.choice and first.parameters == spec["parameters"]
        if layout == 4:
            assert first.search and all(u.corrected for u in first.client_model.values())
        if layout == 5:
            assert genesis.scale == spec.get("scale", (1.0,) * len(FEATURES))
