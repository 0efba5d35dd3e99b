"""A chain in memory: the genesis, round and closing blocks are made here, and every block is
verified against the last one as it is appended (and written to disk first, if the chain has a
file).

The server, each client's replica and the verifier all grow a chain through Chain.append, so the
rules and the record of each client's sample count live in one place.
"""

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.learning.aggregation import FEDAVG, RULES, aggregate, rule_named
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import (
    FORMAT_RULES,
    PRIVATE_TWIN,
    TARGET_TWIN,
    ZERO_HASH,
    Block,
    ClientUpdate,
    RunRecord,
)
from fedchain.ledger.correction import corrected_step
from fedchain.ledger.mining import seal
from fedchain.ledger.signatures import block_message, sign_hex
from fedchain.ledger.store import ChainReader, ChainWriter
from fedchain.ledger.verification import (
    ChainError,
    verify_genesis,
    verify_genesis_fields,
    verify_next,
)
from fedchain.trust.keys import check_public_hex
from fedchain.trust.known_servers import KnownServers


class PinHints(NamedTuple):
    """How the reader's program spells pinning a server and allowing an unsigned chain."""

    pin: str
    allow_unsigned: str


FLAG_HINTS = PinHints("--server-key HEX or --known-servers FILE", "--allow-unsigned")
MAX_KEYS_NAMED = 3  # of a known-servers file, in a refusal


class ChainTip:
    """A chain verified block by block that holds only what the next block is checked against:
    the genesis (the run), the last block and each client's row count as first recorded. Its
    blocks are on disk (when STORE is given), not in memory, so a long chain costs no more to
    follow than a short one: what a client's replica needs."""

    def __init__(
        self,
        genesis: Block,
        *,
        store: ChainWriter | None = None,
        min_difficulty: int = 0,
        now: float | None = None,
    ) -> None:
        verify_genesis(genesis, min_difficulty=min_difficulty, now=now)
        self.store = store
        self.now = now  # None: the clock at each check
        self.genesis = self.last = genesis
        self.sample_counts: dict[str, int] = {}  # each client's rows, as first recorded
        self._keep(genesis)

    @property
    def length(self) -> int:
        """How many blocks the chain holds, the genesis included."""
        return self.last.index + 1  # indexes are contiguous from 0: verify_next checks it

    @property
    def planned_rounds(self) -> int | None:
        """The rounds the genesis planned, or None for a format-1 chain, which does not say."""
        return self.genesis.run.rounds if self.genesis.signed else None

    @property
    def rounds_done(self) -> int:
        planned = self.planned_rounds
        return min(self.last.index, planned) if planned is not None else self.last.index

    @property
    def closed(self) -> bool:
        """True once the closing block, which ends a format-2 run, is on the chain."""
        return self.planned_rounds is not None and self.last.index == self.planned_rounds + 1

    def append(self, block: Block) -> None:
        """Verify BLOCK against the last block, write it (OSError if that fails), keep it."""
        verify_next(
            self.last, block, genesis=self.genesis, sample_counts=self.sample_counts, now=self.now
        )
        self._keep(block)

    def _keep(self, block: Block) -> None:
        if self.store is not None:
            self.store.append(block)
        self.last = block
        self.sample_counts |= block.sample_counts()


class Chain(ChainTip):
    """Verified blocks from the genesis on, every one kept in memory as well (the server sends
    them to clients that join late; the tools print them)."""

    def __init__(self, genesis: Block, **options: object) -> None:
        self.blocks: list[Block] = []
        super().__init__(genesis, **options)

    def attesters(self, index: int) -> tuple[str, ...]:
        """The clients that attested block INDEX (recorded in the block after it)."""
        if index + 1 >= len(self.blocks):
            return ()
        return tuple(sorted(self.blocks[index + 1].attestations))

    def _keep(self, block: Block) -> None:
        super()._keep(block)
        self.blocks.append(block)


def verify_chain(
    blocks: Iterable[Block], *, min_difficulty: int = 0, now: float | None = None
) -> Chain:
    """Return the verified chain; raise ChainError naming the first block that is wrong."""
    return _grow(Chain, blocks, min_difficulty=min_difficulty, now=now)


def verify_tip(
    blocks: Iterable[Block], *, min_difficulty: int = 0, now: float | None = None
) -> ChainTip:
    """Verify BLOCKS one at a time (a file read as it goes, say), keeping none of them but the
    last; raise ChainError naming the first block that is wrong."""
    return _grow(ChainTip, blocks, min_difficulty=min_difficulty, now=now)


def _grow(kind: type[ChainTip], blocks: Iterable[Block], **options: object) -> ChainTip:
    blocks = iter(blocks)
    genesis = next(blocks, None)
    if genesis is None:
        raise ChainError(0, "the chain is empty: no genesis block")
    chain = kind(genesis, **options)
    for block in blocks:
        chain.append(block)
    return chain


class UntrustedChain(ChainError):
    """A chain that verifies but is not the work of a server the reader trusts: unsigned
    (format 1) where that is not allowed, or signed by another key than the one pinned."""

    def __init__(self, reason: str) -> None:
        super().__init__(0, reason)  # the genesis names the key that signs every block


def check_server_key(
    chain: Chain,
    *,
    server_key: str | None = None,
    known_servers: str | Path | None = None,
    allow_unsigned: bool = False,
    hints: PinHints = FLAG_HINTS,
) -> str | None:
    """Raise UntrustedChain unless the verified CHAIN is signed by SERVER_KEY, or by a key the
    KNOWN_SERVERS file records (for any address), or, with neither pinned, is signed at all (or
    ALLOW_UNSIGNED). Return None if a pinned key matched, else a one-line caveat for the reader
    (HINTS says how to pin). Reading KNOWN_SERVERS may raise OSError or TrustError."""
    # Anyone can make a key, sign a chain with it and mine it: a signature proves who made a
    # chain only to a reader who knows which key to expect.
    if server_key is not None and known_servers is not None:
        raise ValueError("pin the server by server_key or by known_servers, not both")
    found = chain.genesis.run.server_key if chain.genesis.signed else None
    made = (
        f"the chain is signed by the server key {found}, not"
        if found
        else "the chain is unsigned (format 1), so not signed"
    )
    if server_key is not None:
        expected = check_public_hex(server_key, "the pinned server key")
        if found != expected:
            raise UntrustedChain(f"{made} by the pinned key {expected}")
        return None
    if known_servers is not None:
        servers = KnownServers(Path(known_servers)).servers()
        if found not in servers.values():
            listed = [f"{key} ({address})" for address, key in servers.items()]
            if len(listed) > MAX_KEYS_NAMED:
                listed[MAX_KEYS_NAMED:] = [f"{len(listed) - MAX_KEYS_NAMED} more"]
            raise UntrustedChain(
                f"{made} by a key {known_servers} records: {', '.join(listed) or 'it records none'}"
            )
        return None
    if found is None:
        if not allow_unsigned:
            raise UntrustedChain(
                "the chain is unsigned (format 1): anyone could have made it; to read it all "
                f"the same: {hints.allow_unsigned}"
            )
        return "the chain is unsigned (format 1): anyone could have made it"
    return (
        f"no server key pinned: anyone holding some key could have made this chain (it names "
        f"the server key {found}); to pin the key you expect: {hints.pin}"
    )


def continue_chain(
    path: Path,
    *,
    min_difficulty: int = 0,
    accept: Callable[[ChainTip], None] = lambda chain: None,
    tip_only: bool = False,
) -> tuple[ChainTip, str | None]:
    """Read and verify the chain file PATH and open it to grow further: the checkpoint a
    restarted server or client goes on from (a ChainTip if TIP_ONLY, read in constant memory;
    else a Chain). ACCEPT(chain) may raise to refuse it first: the file is changed (a torn last
    line cut off) only once the chain is taken. Return the chain and what was dropped off a
    torn last line (None if nothing was). Raises OSError, ChainFileError or ChainError, or what
    ACCEPT raises."""
    reader = ChainReader(path)
    chain = _grow(ChainTip if tip_only else Chain, reader, min_difficulty=min_difficulty)
    accept(chain)
    chain.store = ChainWriter.continuing(path, reader.whole_bytes)
    return chain, reader.dropped_tail


def make_genesis(
    *,
    initial_model: LinearModel,
    feature_names: Sequence[str],
    difficulty: int,
    run: RunRecord,
    server_key: Ed25519PrivateKey,
    aggregation: str = FEDAVG,
    parameters: Mapping[str, float] | None = None,
    scale: Sequence[float] | None = None,
) -> Block:
    """Mine and sign block 0, which records the run: its parameters, keys, starting model and
    aggregation rule (a FedAvg run in format 2, as before; scaffold in format 4; Krum in format
    5, with each feature's SCALE, None for raw units; any other rule in format 3; each in its
    private twin, 6 to 9, when RUN records privacy terms; and that in its targeted twin, 10 to
    17, when RUN records its target)."""
    rule = RULES.get(aggregation)  # an unknown one is refused below, by verify_genesis_fields
    version = FORMAT_RULES if rule is None else rule.format
    if run.privacy is not None:
        version = PRIVATE_TWIN[version]
    if run.target is not None:
        version = TARGET_TWIN[version]
    scaled = rule is not None and rule.scaled
    if scaled and scale is None:
        scale = (1.0,) * len(feature_names)
    genesis = Block(
        index=0,
        timestamp=time.time(),
        previous_hash=ZERO_HASH,
        difficulty=difficulty,
        feature_names=tuple(feature_names),
        aggregation=aggregation,
        cli=(),
        client_model={},
        server_model=initial_model,
        run=run,
        version=version,
        parameters=dict(sorted((parameters or {}).items())),
        scale=tuple(map(float, scale)) if scaled else (),
    )
    verify_genesis_fields(genesis)
    return _seal_and_sign(genesis, server_key)


def make_round_block(
    previous: Block,
    updates: dict[str, ClientUpdate],
    *,
    attestations: Mapping[str, str],
    server_key: Ed25519PrivateKey,
    missing: Mapping[str, str] | None = None,
) -> Block:
    """Mine and sign the block after PREVIOUS: the clients' signed updates (in dict order),
    their aggregate by the run's rule and what the rule chose, the clients' attestations of
    PREVIOUS, and who is MISSING and why. ValueError if the rule cannot aggregate them."""
    cli = tuple(updates)
    search = {}
    if rule_named(previous.aggregation).probes:
        model, search = corrected_step(previous, cli, updates)
        choice = {}
    else:
        result = aggregate(
            previous.aggregation,
            previous.parameters,
            [(c, updates[c].model, updates[c].n_samples) for c in cli],
            **previous.rule_options(),
        )
        model, choice = result.model, result.choice
    block = _successor(
        previous,
        cli=cli,
        client_model=dict(updates),
        server_model=model,
        choice=choice,
        search=search,
        attestations=dict(sorted(attestations.items())),
        missing=dict(sorted((missing or {}).items())),
    )
    return _seal_and_sign(block, server_key)


def make_closing_block(
    previous: Block,
    *,
    attestations: Mapping[str, str],
    server_key: Ed25519PrivateKey,
    missing: Mapping[str, str] | None = None,
) -> Block:
    """Mine and sign the block that ends a run: no model update, only the clients'
    attestations of the last round, so that round is checked by the clients too."""
    block = _successor(
        previous,
        cli=(),
        client_model={},
        server_model=previous.server_model,
        attestations=dict(sorted(attestations.items())),
        missing=dict(sorted((missing or {}).items())),
    )
    return _seal_and_sign(block, server_key)


def _successor(previous: Block, **fields: object) -> Block:
    return Block(
        index=previous.index + 1,
        timestamp=max(time.time(), previous.timestamp),  # a clock stepped back stays monotonic
        previous_hash=previous.hash,
        difficulty=previous.difficulty,
        feature_names=previous.feature_names,
        aggregation=previous.aggregation,
        version=previous.version,
        parameters=previous.parameters,
        scale=previous.scale,
        **fields,
    )


def _seal_and_sign(block: Block, server_key: Ed25519PrivateKey) -> Block:
    sealed = seal(block)
    return replace(sealed, server_signature=sign_hex(server_key, block_message(sealed.hash)))
