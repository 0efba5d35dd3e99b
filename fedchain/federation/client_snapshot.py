"""A client's place in a run between two messages, as plain data, and the client restored from it.

For a transport that runs each message in a fresh process (Flower's deployment starts one per
message): it keeps the snapshot beside the node and builds the client again from its rows, its
key and this. The chain itself is not in it: the replica on disk is read back and verified whole
at each restore, so a snapshot cannot make a client trust a block it did not check.
"""

import json
from pathlib import Path

from fedchain.federation.client import ClientFailed, FederatedClient, Stage
from fedchain.ledger.chain import continue_chain
from fedchain.ledger.store import updates_from_json, updates_to_json

_KEYS = {
    "stage",
    "server_key",
    "seed",
    "rounds",
    "height",
    "caught_up",
    "replica",
    "sent",
    "probes",
    "probes_after",
    "attestation",
}


def snapshot(client: FederatedClient) -> str:
    """CLIENT's state as one line of JSON. A private client's is not kept this way: its
    release and statement are made at its login, which a restore would repeat."""
    if client.privacy is not None:
        raise ClientFailed("a private client cannot be restored from a snapshot")
    state = {
        "stage": client.stage.name,
        "server_key": client.server_key,
        "seed": client.seed,
        "rounds": client.rounds,
        "height": client.height,
        "caught_up": client.caught_up,
        "replica": "" if client.chain is None else str(client.chain.store.path),
        "sent": "" if client.sent is None else updates_to_json({client.name: client.sent}),
        "probes": [updates_to_json(updates) for updates in client.probes],
        "probes_after": client.probes_after,
        "attestation": client.attestation,
    }
    return json.dumps(state, separators=(",", ":"))


def restore(client: FederatedClient, text: str) -> None:
    """Put CLIENT, just built, where the snapshot TEXT says it was: its replica read back and
    verified, the run's columns taken, the update it awaits a block for. Raises ClientFailed."""
    try:
        state = json.loads(text)
        if not isinstance(state, dict) or set(state) != _KEYS:
            raise ValueError(f"its keys are not {sorted(_KEYS)}")
        client.stage = Stage[state["stage"]]
        client.server_key = state["server_key"]
        client.seed, client.rounds = state["seed"], state["rounds"]
        client.height, client.caught_up = state["height"], state["caught_up"]
        client.probes = [updates_from_json(updates) for updates in state["probes"]]
        client.probes_after, client.attestation = state["probes_after"], state["attestation"]
        sent = updates_from_json(state["sent"])[client.name] if state["sent"] else None
    except (ValueError, TypeError, KeyError) as error:
        raise ClientFailed(f"this node's saved state cannot be read: {error}") from None
    client.sent = sent
    if state["replica"]:
        path = Path(state["replica"])
        try:
            client.chain, _ = continue_chain(
                path, min_difficulty=client.min_difficulty, tip_only=True
            )
        except (OSError, ValueError) as error:  # ChainFileError and ChainError are ValueErrors
            raise ClientFailed(f"cannot go on with the replica {path}: {error}") from None
        # Verified, but against its own genesis: it must be the run the client joined, with the
        # server it pinned (as _accept_genesis checked), or its blocks vouch for nothing.
        run = client.chain.genesis.run
        if run.server_key != client.server_key:
            raise ClientFailed(
                f"the replica {path} names server key {run.server_key[:16]}…, not the pinned "
                f"{client.server_key[:16]}…"
            )
        if run.participants.get(client.name) != client.public_key:
            raise ClientFailed(f"the replica {path}'s genesis does not admit this client's key")
        client.take_columns_of(client.chain.genesis)
        if client.stage is Stage.CATCHING_UP and client.caught_up < client.chain.length:
            # It was checking the server's blocks against the ones it held: that reading of
            # the replica is not kept, and a transport that restores clients never asks for it
            # (it welcomes each client once, to a new run).
            raise ClientFailed("this node cannot be restored part-way through catching up")
