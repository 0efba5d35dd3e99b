"""A chain shown to a person: a few lines a block, and the verdict of verification."""

import enum
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from fedchain.learning.aggregation import RULES
from fedchain.ledger.block import FORMAT_RULES, Block
from fedchain.ledger.chain import Chain, UntrustedChain, check_server_key, verify_chain
from fedchain.ledger.verification import ChainError

SHOWN_WEIGHTS = 16  # per block; a wide model would otherwise bury the rest
LEGACY_KRUM_NOTE = (
    "note: krum in the legacy format 3: distances in raw weight units, and the kept models "
    "averaged by the row counts the clients claim (servers now write krum in format 5)"
)


def format_block(block: Block) -> str:
    """A few lines describing BLOCK for a person."""
    try:
        when = datetime.fromtimestamp(block.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):  # shown as it is; verification judges it
        when = f"timestamp {block.timestamp!r}"
    kind = "genesis" if block.index == 0 else "round" if block.cli else "closing"
    clients = ", ".join(f"{c} ({block.client_model[c].n_samples} rows)" for c in block.cli)
    pairs = list(zip(block.feature_names, block.server_model.weights, strict=False))
    weights = "  ".join(f"{name}={w:.4g}" for name, w in pairs[:SHOWN_WEIGHTS])
    if len(pairs) > SHOWN_WEIGHTS:
        weights += f"  … (+{len(pairs) - SHOWN_WEIGHTS} more)"
    return "\n".join(
        [
            f"block {block.index} ({kind})  {when}  difficulty {block.difficulty}  "
            f"nonce {block.nonce}  hash {block.hash[:16]}…",
            f"  clients: {clients or 'none'}",
            f"  server model: bias={block.server_model.bias:.4g}  {weights}",
        ]
    )


class Verdict(enum.Enum):
    VALID = "valid"  # and, for a signed chain, complete: every planned round and the closing
    INCOMPLETE = "incomplete"  # valid so far, but the run it records did not finish
    INVALID = "invalid"
    REFUSED = "refused"  # valid, but unsigned or signed by another key than the one pinned


def report_chain(
    blocks: Sequence[Block],
    say: Callable[[str], None],
    *,
    show_blocks: bool = True,
    min_difficulty: int = 0,
    server_key: str | None = None,
    known_servers: str | Path | None = None,
    allow_unsigned: bool = False,
    note: Callable[[str], None] | None = None,
) -> Verdict:
    """Print the blocks (if asked), who signed and attested each, and the verdict; the caveat
    of a chain whose server no key pinned goes to NOTE (default SAY). check_server_key says
    what is refused; reading KNOWN_SERVERS may raise OSError or TrustError."""
    if show_blocks:
        for block in blocks:
            say(format_block(block))
    try:
        chain = verify_chain(blocks, min_difficulty=min_difficulty)
    except ChainError as error:
        say(f"invalid: {error}")
        return Verdict.INVALID
    try:
        caveat = check_server_key(
            chain,
            server_key=server_key,
            known_servers=known_servers,
            allow_unsigned=allow_unsigned,
        )
    except UntrustedChain as error:
        say(f"refused: {error}")
        return Verdict.REFUSED
    if caveat is not None:
        (note or say)(f"note: {caveat}")
    if RULES[chain.genesis.aggregation].scaled and chain.genesis.version == FORMAT_RULES:
        # Still valid (it verifies as written), but no server writes it now: a run started in
        # it lets a client steer the average by the row count it claims.
        (note or say)(LEGACY_KRUM_NOTE)
    count = f"{len(blocks)} block{'s' if len(blocks) != 1 else ''}"
    if not chain.genesis.signed:
        say(f"valid: {count} (format 1: unsigned, so no contribution is attributable)")
        return Verdict.VALID
    for block in chain.blocks:
        say(describe_signatures(chain, block))
    if chain.genesis.private:
        say(describe_privacy(chain.genesis))
    if chain.genesis.targeted:
        say(describe_target(chain.genesis))
    planned, done = chain.planned_rounds, chain.rounds_done
    if not chain.closed:
        verb = "verifies" if len(blocks) == 1 else "verify"
        say(f"incomplete: {count} {verb}, but the run planned {planned} rounds and holds {done}")
        return Verdict.INCOMPLETE
    say(f"valid: {count}; the run is complete ({done} of {planned} rounds)")
    return Verdict.VALID


def describe_privacy(genesis: Block) -> str:
    """One line: each client's signed privacy guarantee, and the run's limit."""
    terms = genesis.run.privacy
    each = [
        f"{name} ε {s.epsilon:g}, δ {s.delta:g} ({s.mechanism})"
        if (s := terms.statements.get(name))
        else f"{name} none"
        for name in sorted(genesis.run.participants)
    ]
    limit = "no limit" if terms.max_epsilon is None else f"at most ε {terms.max_epsilon:g}"
    return (
        f"privacy, per row of each client's data, as each client signed: {'; '.join(each)} "
        f"(the run admits {limit})"
    )


def describe_target(genesis: Block) -> str:
    """One line: what the run predicts, and in what unit, as its genesis records."""
    target = genesis.run.target
    unit = f", in {target.unit}" if target.unit else " (its unit not stated)"
    return f"the run predicts {target.column}{unit}"


def describe_choice(block: Block, most: int = 3) -> str:
    """What BLOCK's rule chose, naming the outliers: whom Krum left out, whose values were
    trimmed most (or, for the median, used least); scaffold's step. Empty for FedAvg and a
    closing block."""
    if block.search:
        along, previous = block.search["coefficients"]
        return (
            f"{block.aggregation}: the least pooled MSE lies {along:.3g} x the way to the clients' "
            f"average, {previous:+.3g} x the last step"
        )
    if not block.choice:
        return ""
    rule = block.aggregation
    if RULES[rule].keeps_clients:
        kept = [n for n in block.cli if block.choice[n][1] == 1.0]
        out = [f"{n} (score {block.choice[n][0]:.3g})" for n in block.cli if n not in kept]
        best = min(block.choice[n][0] for n in kept)
        return f"{rule} kept {', '.join(kept)} (best score {best:.3g}); left out {', '.join(out)}"
    n_values = len(block.feature_names) + 1
    if RULES[rule].counts_used_values:
        used = {n: sum(v == 0.0 for v in block.choice[n]) for n in block.cli}
        shown = sorted(block.cli, key=lambda n: (used[n], n))[:most]
        least = ", ".join(f"{n} {used[n]}/{n_values}" for n in shown)
        return f"{rule}: values used least: {least}"
    trimmed = {n: sum(v != 0.0 for v in block.choice[n]) for n in block.cli}
    shown = sorted(block.cli, key=lambda n: (-trimmed[n], n))[:most]
    most_trimmed = ", ".join(f"{n} {trimmed[n]}/{n_values}" for n in shown)
    return f"{rule}: values trimmed most: {most_trimmed}"


def describe_signatures(chain: Chain, block: Block) -> str:
    """One line: who signed BLOCK's contents, and which clients attested it afterwards."""
    if block.index == 0:
        what = f"genesis, signed by the server {block.run.server_key[:16]}…, admits "
        what += ", ".join(sorted(block.run.participants))
    elif block.cli:
        what = "updates signed by " + ", ".join(block.cli)
        if block.choice or block.search:
            what += "; " + describe_choice(block)
    else:
        what = "closes the run"
    if block.missing:  # the reasons are the server's word, signed by it
        what += "; missing: " + ", ".join(f"{n} ({why})" for n, why in block.missing.items())
    attesters = chain.attesters(block.index)
    if attesters:
        return f"block {block.index}: {what}; attested by {', '.join(attesters)}"
    return f"block {block.index}: {what}" + ("" if chain.closed else "; not attested yet")
