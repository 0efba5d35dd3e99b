"""A client follows a long chain holding only its tip: after catching up on hundreds of blocks,
and after going on from a replica that long, it holds the genesis and the last block in memory,
whatever the chain's length; the blocks themselves are in the replica."""

import gc
import types

import numpy as np
from chain_helpers import CLIENT_KEYS, SERVER_KEY, attest, signed_update
from client_loopback import DATA, SERVER_HEX, Loopback, block_message, new_client, pickled, welcome

from fedchain.federation.client import Stage
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block, RunRecord
from fedchain.ledger.chain import make_closing_block, make_genesis, make_round_block
from fedchain.ledger.store import load_chain
from fedchain.trust.keys import public_hex

ROUNDS = 300


def long_run() -> list[Block]:
    """A complete run of ROUNDS rounds in which cli2 trains and cli1, the client under test,
    is missing: the chain a client that comes back at the end catches up on."""
    participants = {name: public_hex(key) for name, key in CLIENT_KEYS.items()}
    genesis = make_genesis(
        initial_model=LinearModel.zeros(len(DATA.feature_names)),
        feature_names=DATA.feature_names,
        difficulty=8,
        run=RunRecord(ROUNDS, 0, SERVER_HEX, participants),
        server_key=SERVER_KEY,
    )
    blocks = [genesis]
    missing = {"cli1": "not connected"}
    model = LinearModel(np.full(len(DATA.feature_names), 0.5), 8.0)
    for _ in range(ROUNDS):
        update = signed_update(genesis, blocks[-1], "cli2", model, 97, key=CLIENT_KEYS["cli2"])
        attestations = attest(genesis, blocks[-1], ("cli2",)) if len(blocks) > 1 else {}
        blocks.append(
            make_round_block(
                blocks[-1],
                {"cli2": update},
                attestations=attestations,
                server_key=SERVER_KEY,
                missing=missing,
            )
        )
    attestations = attest(genesis, blocks[-1], ("cli2",))
    blocks.append(
        make_closing_block(
            blocks[-1], attestations=attestations, server_key=SERVER_KEY, missing=missing
        )
    )
    return blocks


def blocks_held(root: object) -> int:
    """How many distinct blocks ROOT reaches through its attributes, containers and closures
    (not through classes, modules or functions, which reach everything)."""
    seen, stack, count = set(), [root], 0
    skipped = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    while stack:
        thing = stack.pop()
        if id(thing) in seen or isinstance(thing, skipped):
            continue
        seen.add(id(thing))
        count += isinstance(thing, Block)
        stack.extend(gc.get_referents(thing))
    return count


def test_a_client_holds_only_the_tip_of_a_long_chain(tmp_path):
    blocks = long_run()
    server_says = b"".join(
        [
            pickled({"type": "challenge", "challenge": bytes(32)}),
            pickled(welcome(blocks[0], height=len(blocks))),
            *(pickled(block_message(block)) for block in blocks[1:]),
            pickled({"type": "done", "blocks": len(blocks)}),
        ]
    )
    replica = tmp_path / "replica.jsonl"
    with Loopback() as loop:
        for joining in ("first", "again, going on from its replica"):
            said: list[str] = []
            client = new_client(replica, said)
            assert loop.play(server_says, client) is None, (joining, said)
            assert client.stage is Stage.DONE and client.chain.last == blocks[-1]
            # The genesis and the last block: not the 302 blocks it verified.
            assert blocks_held(client) <= 2, joining
            assert client.chain.length == ROUNDS + 2
            client.close()
    assert [b.hash for b in load_chain(replica).blocks] == [b.hash for b in blocks]
