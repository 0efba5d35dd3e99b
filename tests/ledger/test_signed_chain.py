"""Format 2: every contribution is attributable and every lie provable. Signed updates cannot be
replayed, clients attest the blocks they verified, a run is complete only when closed, and two
server-signed versions of one block prove equivocation. Format-1 chains still verify, unsigned."""

import time
from dataclasses import replace

import numpy as np
import pytest
from chain_helpers import (
    CLIENT_KEYS,
    SERVER_KEY,
    attest,
    build_chain,
    fixed_key,
    genesis_for,
    next_round,
    reseal,
    run_record,
    signed_update,
)
from in_process import run_main
from processes import ROOT

from fedchain.learning.aggregation import fedavg
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.chain import (
    make_closing_block,
    make_genesis,
    make_round_block,
    verify_chain,
)
from fedchain.ledger.compare import compare_chains
from fedchain.ledger.signatures import sign_hex, signature_holds
from fedchain.ledger.store import ChainWriter, load_chain
from fedchain.ledger.verification import MAX_CLOCK_AHEAD_S, ChainError
from fedchain.trust.keys import public_hex, sign

FORMAT_1_CHAIN = ROOT / "tests" / "fixtures" / "format1-chain.jsonl"  # written by the first release


def round_with(previous, genesis, updates):
    server_model = fedavg([(u.model, u.n_samples) for u in updates.values()])
    block = make_round_block(previous, updates, attestations={}, server_key=SERVER_KEY)
    assert block.server_model == server_model
    return block


@pytest.mark.parametrize("replay", ["another round", "another chain", "another name"])
def test_a_signed_update_replayed_elsewhere_fails(replay):
    blocks = build_chain(rounds=2)
    genesis, first = blocks[0], blocks[1]
    honest = first.client_model["cli1"]
    if replay == "another round":  # round 1's update, offered again in round 2
        updates = {"cli1": honest}
        previous = first
    elif replay == "another chain":  # the same round of a different run of the same clients
        genesis = genesis_for(2)
        assert genesis.hash != blocks[0].hash
        updates, previous = {"cli1": honest}, genesis
    else:  # cli1's signed update, presented as cli2's
        updates, previous = {"cli2": honest}, genesis
    block = make_round_block(previous, updates, attestations={}, server_key=SERVER_KEY)
    chain = [genesis] if previous is genesis else blocks[:2]
    with pytest.raises(ChainError, match=f"block {block.index}: cli[12]'s signature on its update"):
        verify_chain([*chain, block])


def test_an_update_signed_by_the_wrong_key_fails():
    genesis = genesis_for(1)
    forged = signed_update(
        genesis, genesis, "cli1", LinearModel([1, 2, 3], 0), 5, key=fixed_key("x")
    )
    block = round_with(genesis, genesis, {"cli1": forged})
    with pytest.raises(ChainError, match="block 1: cli1's signature on its update does not verify"):
        verify_chain([genesis, block])


def test_a_contributor_the_genesis_did_not_admit_is_named():
    genesis = genesis_for(1)
    stranger = signed_update(
        genesis, genesis, "cli3", LinearModel([1, 2, 3], 0), 5, key=fixed_key("cli3")
    )
    block = round_with(genesis, genesis, {"cli3": stranger})
    with pytest.raises(ChainError, match="block 1: cli3 is not a participant admitted"):
        verify_chain([genesis, block])


def test_a_block_signed_by_another_server_key_fails():
    blocks = build_chain(rounds=1)
    other = make_round_block(
        blocks[0], dict(blocks[1].client_model), attestations={}, server_key=fixed_key("other")
    )
    with pytest.raises(ChainError, match="block 1: the server's signature does not verify"):
        verify_chain([blocks[0], other])


def test_attestations_are_of_the_block_before_and_named_per_block(tmp_path):
    blocks = build_chain(rounds=2, closed=True)
    chain = verify_chain(blocks)
    assert chain.closed and chain.rounds_done == 2
    assert [chain.attesters(i) for i in range(4)] == [(), ("cli1", "cli2"), ("cli1", "cli2"), ()]
    # An attestation of another block (here: of block 1, put into the closing block) fails.
    wrong = make_closing_block(
        blocks[2], attestations=attest(blocks[0], blocks[1]), server_key=SERVER_KEY
    )
    with pytest.raises(ChainError, match="block 3: cli1's attestation of block 2 does not verify"):
        verify_chain([*blocks[:3], wrong])


def test_a_chain_is_complete_only_once_closed(tmp_path):
    blocks = build_chain(rounds=2, closed=True)
    path = tmp_path / "chain.jsonl"
    with ChainWriter(path) as writer:
        for block in blocks[:3]:
            writer.append(block)
    result = run_main("blockchain.py", "verify", path)
    assert result.returncode == 3
    assert result.stdout.splitlines()[-1] == (
        "incomplete: 3 blocks verify, but the run planned 2 rounds and holds 2"
    )
    assert "block 2: updates signed by cli1, cli2; not attested yet" in result.stdout
    with ChainWriter(tmp_path / "closed.jsonl") as writer:
        for block in blocks:
            writer.append(block)
    closed = run_main("blockchain.py", "verify", tmp_path / "closed.jsonl")
    assert closed.returncode == 0, closed.stdout
    assert closed.stdout.splitlines()[-1] == "valid: 4 blocks; the run is complete (2 of 2 rounds)"


def test_the_closing_block_holds_no_update_and_keeps_the_model():
    blocks = build_chain(rounds=1, closed=True)
    with_update = reseal(blocks[2], client_model=dict(blocks[1].client_model), cli=blocks[1].cli)
    with pytest.raises(ChainError, match="block 2: "):
        verify_chain([*blocks[:2], with_update])
    moved = reseal(blocks[2], server_model=LinearModel([9.0, 9.0, 9.0], 0.0))
    with pytest.raises(ChainError, match="block 2: the closing block must keep"):
        verify_chain([*blocks[:2], moved])
    after = next_round(blocks[0], blocks[2], np.random.default_rng(1))
    with pytest.raises(ChainError, match="block 3: the run planned 1 rounds; block 2 closed it"):
        verify_chain([*blocks, after])


def test_a_block_dated_in_the_future_is_refused():
    blocks = build_chain(rounds=1)
    ahead = reseal(blocks[1], timestamp=time.time() + MAX_CLOCK_AHEAD_S + 60)
    with pytest.raises(ChainError, match=r"block 1: dated 3[56]\d s ahead of this clock"):
        verify_chain([blocks[0], ahead])
    verify_chain([blocks[0], ahead], now=ahead.timestamp)  # a clock that agrees accepts it


def test_a_format_1_chain_still_verifies_reported_unsigned_on_request():
    chain = verify_chain(load_chain(FORMAT_1_CHAIN).blocks)
    assert not chain.genesis.signed and chain.planned_rounds is None
    result = run_main("blockchain.py", "verify", FORMAT_1_CHAIN, "--allow-unsigned")
    assert result.returncode == 0
    assert result.stdout.strip() == (
        "valid: 4 blocks (format 1: unsigned, so no contribution is attributable)"
    )
    assert result.stderr == "note: the chain is unsigned (format 1): anyone could have made it\n"


def test_compare_proves_equivocation_when_the_server_signed_both_versions(tmp_path):
    blocks = build_chain(rounds=2)
    rewritten = reseal(blocks[2], timestamp=blocks[2].timestamp + 1)  # the server re-signs
    assert rewritten.hash != blocks[2].hash
    comparison = compare_chains(blocks, [*blocks[:2], rewritten])
    assert comparison.index == 2 and comparison.equivocation
    for name, copy in (("a", blocks), ("b", [*blocks[:2], rewritten])):
        with ChainWriter(tmp_path / f"{name}.jsonl") as writer:
            for block in copy:
                writer.append(block)
    result = run_main("blockchain.py", "compare", tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert result.returncode == 5
    assert result.stdout.startswith(
        f"proof of equivocation: the server (key {blocks[0].run.server_key}) signed two "
        f"different blocks at index 2: {blocks[2].hash} and {rewritten.hash}"
    )


def test_compare_without_a_proof():
    blocks = build_chain(rounds=2)
    assert compare_chains(blocks, blocks[:2]).summary.endswith("the first goes on to 3")
    assert compare_chains(blocks, blocks).index is None
    unsigned = [
        *blocks[:2],
        replace(reseal(blocks[2], timestamp=blocks[2].timestamp + 2), server_signature=""),
    ]
    comparison = compare_chains(blocks, unsigned)
    assert comparison.index == 2 and not comparison.equivocation
    assert "the second copy's block there is not validly signed" in comparison.summary
    other_run = build_chain(rounds=2, seed=3)
    assert compare_chains(blocks, [genesis_for(2), *other_run[1:]]).index == 0


def test_keys_in_the_helpers_are_distinct():
    keys = {k.public_key().public_bytes_raw() for k in [SERVER_KEY, *CLIENT_KEYS.values()]}
    assert len(keys) == 3


def test_a_remembered_check_still_refuses_anything_else():
    # signatures.py remembers signatures that held (and those it made) to spare checking them
    # twice in a round; a changed signature, key or message must still be checked and fail.
    key, other = fixed_key("memo"), fixed_key("memo, other")
    message = b"an update"
    signature = sign_hex(key, message)
    assert signature_holds(public_hex(key), signature, message)
    assert not signature_holds(public_hex(other), signature, message)
    assert not signature_holds(public_hex(key), signature, message + b"!")
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert not signature_holds(public_hex(key), flipped, message)
    foreign = sign(other, message).hex()  # made elsewhere: checked, then remembered
    assert signature_holds(public_hex(other), foreign, message)


def test_every_participant_is_accounted_for_in_every_block():
    rng = np.random.default_rng(2)
    genesis = genesis_for(2)
    alone = next_round(genesis, genesis, rng, {"cli1": 535})  # cli2 recorded missing
    assert alone.missing == {"cli2": "sat this round out"}
    verify_chain([genesis, alone])
    unaccounted = reseal(alone, missing={})
    with pytest.raises(ChainError, match="block 1: cli2 neither took part nor is recorded"):
        verify_chain([genesis, unaccounted])
    stranger = reseal(alone, missing={"cli2": "gone", "cli9": "gone"})
    with pytest.raises(ChainError, match="block 1: cli9 is not a participant"):
        verify_chain([genesis, stranger])
    both = next_round(genesis, genesis, rng)
    with pytest.raises(ChainError, match="block 1: cli1 both took part and is recorded missing"):
        verify_chain([genesis, reseal(both, missing={"cli1": "gone"})])
    # The reason is under the hash: changing it breaks the block.
    with pytest.raises(ChainError, match="block 1: hash does not match"):
        verify_chain([genesis, replace(alone, missing={"cli2": "something else"})])


@pytest.mark.parametrize("flags", [(), ("--require-signed",)], ids=["default", "require-signed"])
def test_verify_refuses_an_unsigned_chain_unless_allowed(flags):
    result = run_main("blockchain.py", "verify", FORMAT_1_CHAIN, *flags)
    assert result.returncode == 6
    assert result.stdout.strip() == (
        "refused: block 0: the chain is unsigned (format 1): anyone could have made it; to read "
        "it all the same: --allow-unsigned"
    )


def test_compare_finds_no_proof_in_two_runs_signed_with_one_key():
    # The server's key outlives a run: block 1 of another run is signed by it too, but it
    # follows another genesis, so it proves nothing against this run.
    first, second = build_chain(rounds=1), build_chain(rounds=1, seed=4)
    assert first[0].hash != second[0].hash
    mixed = [first[0], second[1]]
    comparison = compare_chains(first, mixed)
    assert comparison.index == 1 and not comparison.equivocation
    assert "not both blocks there follow block 0" in comparison.summary


def test_the_genesis_fixes_the_quorum_and_every_round_meets_it():
    genesis = make_genesis(
        initial_model=LinearModel.zeros(3),
        feature_names=("age", "bmi", "smoker"),
        difficulty=8,
        run=replace(run_record(2), min_clients=2),
        server_key=SERVER_KEY,
    )
    rng = np.random.default_rng(8)
    verify_chain([genesis, next_round(genesis, genesis, rng)])
    alone = next_round(genesis, genesis, rng, {"cli1": 535})
    with pytest.raises(ChainError, match="block 1: 1 clients took part, fewer than the run's"):
        verify_chain([genesis, alone])
    with pytest.raises(ValueError):
        replace(run_record(2), min_clients=0)
    with pytest.raises(ChainError, match="block 0: min_clients 3 is more than"):
        make_genesis(
            initial_model=LinearModel.zeros(3),
            feature_names=("a", "b", "c"),
            difficulty=8,
            run=replace(run_record(2), min_clients=3),
            server_key=SERVER_KEY,
        )
    with pytest.raises(ChainError, match="block 0: the genesis block must have no client"):
        verify_chain([reseal(genesis, missing={"cli1": "made up"})])
