"""The rules a block must satisfy: the genesis on its own, and every later block against the one
before it. Every check names the block by its position, so a forged `index` cannot shift blame,
and a failed signature names whose it is.
"""

import time
from collections.abc import Mapping, Sequence
from typing import NoReturn

from fedchain.learning.aggregation import (
    FEDAVG,
    RULES,
    aggregate,
    check_parameters,
    check_scale,
    clients_needed,
)
from fedchain.learning.privacy import MECHANISMS, check_budget
from fedchain.learning.schema import Schema, parse_schema
from fedchain.ledger.block import (
    FORMAT_CORRECTED,
    FORMAT_RULES,
    FORMAT_SCALED,
    FORMAT_SIGNED,
    KNOWN_FORMATS,
    ZERO_HASH,
    Block,
    PrivacyStatement,
    compute_hash,
    formats_laid_out_as,
)
from fedchain.ledger.correction import corrected_step, probe_point
from fedchain.ledger.mining import meets_difficulty
from fedchain.ledger.signatures import (
    attestation_message,
    block_message,
    privacy_message,
    probe_message,
    signature_holds,
    update_message,
)

MAX_CLOCK_AHEAD_S = 300.0  # a block dated further ahead of the verifier's clock is refused


class ChainError(ValueError):
    """A chain that fails verification: the first bad block's index and the reason."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"block {index}: {reason}")
        self.index = index
        self.reason = reason


def verify_genesis(genesis: Block, *, min_difficulty: int = 0, now: float | None = None) -> None:
    """Check block 0: its own fields, its hash, its proof of work and the server's signature."""
    verify_genesis_fields(genesis)
    _verify_seal(0, genesis, now)
    # Anyone can re-mine a forged chain at difficulty 0; a verifier says what work it expects.
    if genesis.difficulty < min_difficulty:
        raise ChainError(
            0, f"difficulty {genesis.difficulty} is below the required {min_difficulty}"
        )
    if genesis.signed:
        _verify_server_signature(0, genesis, genesis)


def verify_genesis_fields(genesis: Block) -> None:
    """Check block 0's fields, before it is mined or after."""

    def fail(reason: str) -> NoReturn:
        raise ChainError(0, reason)  # it sits first, whatever its index field claims

    if genesis.version not in KNOWN_FORMATS:
        fail(f"format version {genesis.version} is not one this program knows")
    if genesis.index != 0:
        fail("the first block must be the genesis block, index 0")
    if genesis.previous_hash != ZERO_HASH:
        fail("the genesis block must have an all-zero previous_hash")
    if genesis.cli or genesis.attestations or genesis.missing:
        fail("the genesis block must have no client models, attestations or missing clients")
    if genesis.aggregation not in RULES:
        fail(f"unknown aggregation rule {genesis.aggregation!r}")
    rule = RULES[genesis.aggregation]
    written_in = {r.format: r.name for r in RULES.values()}  # whose runs each format is for
    layout = genesis.layout  # a private or targeted format is checked as its twin, and then some
    # Formats 1 and 2 hold no parameters or choices; format 3 holds any rule's (Krum wrote it
    # before format 5) but no gradients; a later format is written for one rule alone.
    if layout < FORMAT_RULES and rule.format != FORMAT_SIGNED:
        fail(
            f"a format-{genesis.version} chain can only record {written_in[FORMAT_SIGNED]}, "
            f"not {genesis.aggregation!r}"
        )
    if (layout == FORMAT_CORRECTED) != rule.probes:
        fail(
            f"{written_in[FORMAT_CORRECTED]} runs, and only they, are written in format "
            f"{formats_laid_out_as(FORMAT_CORRECTED)}, not "
            f"{genesis.aggregation!r} in format {genesis.version}"
        )
    if layout == FORMAT_RULES and rule.scaled and genesis.version != FORMAT_RULES:
        # Format 3 holds Krum only because Krum was written in it before format 5 existed; no
        # program ever wrote Krum in a twin of format 3, whose distances would be in raw units.
        fail(
            f"{genesis.aggregation} runs are written in format "
            f"{formats_laid_out_as(FORMAT_SCALED)}, not {genesis.version}"
        )
    if layout > FORMAT_RULES and layout != rule.format:
        fail(
            f"format {genesis.version} records {written_in[layout]} runs only, not "
            f"{genesis.aggregation!r}"
        )
    try:
        check_parameters(genesis.aggregation, genesis.parameters)
        if layout == FORMAT_SCALED:
            check_scale(genesis.scale, len(genesis.feature_names))
    except ValueError as error:
        fail(str(error))
    if genesis.choice or genesis.search:
        fail("the genesis block must record no choice of the rule, nor a search step")
    if not genesis.feature_names:
        fail("the genesis block must name the features")
    if genesis.signed and not genesis.run.participants:
        fail("the genesis block admits no clients")
    if genesis.signed and genesis.run.min_clients > len(genesis.run.participants):
        fail(f"min_clients {genesis.run.min_clients} is more than the clients it admits")
    needed = clients_needed(genesis.aggregation, genesis.parameters)
    if genesis.signed and genesis.run.min_clients < needed:
        # A round with fewer clients could not be aggregated: refused before it starts.
        fail(
            f"{genesis.aggregation} needs every round to hold at least {needed} clients, but "
            f"min_clients is {genesis.run.min_clients}"
        )
    _verify_model_sizes(0, genesis)
    if genesis.targeted and genesis.run.target.column in genesis.feature_names:
        fail(f"the target column {genesis.run.target.column!r} is also one of the features")
    if genesis.private:
        _verify_privacy(genesis)


def _verify_privacy(genesis: Block) -> None:
    """The privacy terms hold together: a schema that bounds exactly the run's columns, and a
    statement signed by each private client that keeps within the run's limit."""
    run, terms = genesis.run, genesis.run.privacy
    try:
        schema = parse_schema(terms.schema, source="the privacy terms' schema")
    except ValueError as error:
        raise ChainError(0, str(error)) from None
    if fault := schema_fault(schema, genesis.feature_names):
        raise ChainError(0, f"the privacy terms' {fault}")
    if genesis.targeted and genesis.run.target.column not in schema.bounds:
        raise ChainError(
            0, f"the privacy terms' schema does not bound the target {genesis.run.target.column!r}"
        )
    if schema.canonical() != terms.schema:
        raise ChainError(0, "the privacy terms' schema is not written in its canonical form")
    for name in sorted(run.participants):
        fault = statement_fault(
            name,
            terms.statements.get(name),
            participant_key=run.participants[name],
            server_key=run.server_key,
            schema_digest=schema.digest(),
            max_epsilon=terms.max_epsilon,
        )
        if fault:
            raise ChainError(0, fault)


def schema_fault(schema: Schema, feature_names: Sequence[str]) -> str | None:
    """What keeps SCHEMA from being a run's with FEATURE_NAMES, or None: it must bound each of
    them and one column more, the target (which only formats 10 to 17 name)."""
    missing = [name for name in feature_names if name not in schema.bounds]
    beyond = len(schema.bounds) - (len(feature_names) - len(missing))
    if missing or beyond != 1:
        return (
            f"schema must bound every feature and the target (missing from it: "
            f"{', '.join(missing) or 'none'}; other columns: {beyond})"
        )
    return None


def statement_fault(
    name: str,
    statement: PrivacyStatement | None,
    *,
    participant_key: str,
    server_key: str,
    schema_digest: str,
    max_epsilon: float | None,
) -> str | None:
    """What is wrong with NAME's privacy statement in a run of SERVER_KEY with these terms, or
    None: the server asks as a client joins, and a verifier of every genesis."""
    if statement is None:
        if max_epsilon is None:
            return None
        return (
            f"{name} states no differential privacy, but the run admits clients only with "
            f"ε at most {max_epsilon:g} (--max-epsilon)"
        )
    if statement.mechanism not in MECHANISMS:
        return f"{name}'s privacy mechanism {statement.mechanism!r} is not one this program knows"
    try:
        check_budget(statement.epsilon, statement.delta)
    except ValueError as error:
        return f"{name}'s privacy statement: {error}"
    if max_epsilon is not None and statement.epsilon > max_epsilon:
        return (
            f"{name} states ε {statement.epsilon:g}, above the most the run admits, "
            f"ε {max_epsilon:g} (--max-epsilon)"
        )
    message = privacy_message(
        server_key=server_key,
        name=name,
        mechanism=statement.mechanism,
        epsilon=statement.epsilon,
        delta=statement.delta,
        schema_digest=schema_digest,
    )
    if not signature_holds(participant_key, statement.signature, message):
        return f"{name}'s signature on its privacy statement fails"
    return None


def verify_next(
    previous: Block,
    block: Block,
    *,
    genesis: Block,
    sample_counts: Mapping[str, int],
    now: float | None = None,
) -> None:
    """Check that BLOCK is a valid successor of PREVIOUS in the chain that GENESIS starts;
    SAMPLE_COUNTS holds each client's row count as the chain so far first recorded it."""

    position = previous.index + 1  # named by where it sits, even if its index field lies

    def fail(reason: str) -> NoReturn:
        raise ChainError(position, reason)

    if block.version != genesis.version:
        fail(f"format version {block.version} differs from the genesis's {genesis.version}")
    if block.index != position:
        fail(f"index is {block.index}, but it follows block {previous.index}")
    if block.previous_hash != previous.hash:
        fail(f"previous_hash does not match the hash of block {previous.index}")
    _verify_seal(position, block, now)
    if block.difficulty < previous.difficulty:  # and so never below the genesis's
        fail(
            f"difficulty {block.difficulty} is below block {previous.index}'s {previous.difficulty}"
        )
    if block.timestamp < previous.timestamp:
        fail(f"timestamp goes back in time from block {previous.index}")
    if block.feature_names != genesis.feature_names:
        fail("feature_names differ from the genesis block's")
    if block.aggregation != genesis.aggregation:
        fail(f"aggregation {block.aggregation!r} differs from the genesis's")
    if _bits(block.parameters) != _bits(genesis.parameters):
        fail(
            f"the rule's parameters {block.parameters} differ from the genesis's "
            f"{genesis.parameters}"
        )
    if _bits({"scale": block.scale}) != _bits({"scale": genesis.scale}):
        fail("the features' scale differs from the genesis's")
    closing = genesis.signed and position == genesis.run.rounds + 1
    if genesis.signed:
        _verify_server_signature(position, block, genesis)
        if position > genesis.run.rounds + 1:
            fail(f"the run planned {genesis.run.rounds} rounds; block {position - 1} closed it")
        _verify_contributors(position, previous, block, genesis)
    if closing:
        if block.cli:
            fail("the closing block may hold no client models")
        if block.server_model != previous.server_model:
            fail("the closing block must keep the last round's global model")
        if block.choice or block.search:
            fail("the closing block must record no choice of the rule, nor a search step")
        return
    if not block.cli:
        fail("a round block must hold at least one client model")
    if genesis.signed and len(block.cli) < genesis.run.min_clients:
        fail(
            f"{len(block.cli)} clients took part, fewer than the run's min_clients "
            f"{genesis.run.min_clients}"
        )
    for name, n_samples in block.sample_counts().items():
        # A client's rows are fixed for a run; a changed count would reweigh the average.
        if sample_counts.get(name, n_samples) != n_samples:
            fail(f"{name}'s n_samples changed from {sample_counts[name]} earlier in the chain")
    _verify_model_sizes(position, block)
    rule = block.aggregation
    if RULES[rule].probes:
        _verify_corrected(position, previous, block, genesis)
        return
    try:
        result = aggregate(
            rule,
            block.parameters,
            [(c, block.client_model[c].model, block.client_model[c].n_samples) for c in block.cli],
            **block.rule_options(),
        )
    except ValueError as error:
        how = "averaged" if rule == FEDAVG else f"aggregated by {rule}"
        fail(f"the client models cannot be {how}: {error}")
    if result.model != block.server_model:
        fail(
            "server_model is not the FedAvg of the client models"
            if rule == FEDAVG
            else f"server_model is not what {rule} makes of the client models"
        )
    if _bits(result.choice) != _bits(block.choice):
        fail(f"the recorded choice is not what {rule} chose from the client models")


def _verify_corrected(position: int, previous: Block, block: Block, genesis: Block) -> None:
    """A scaffold round block: every gradient has the parameters' size, the probe gradients are
    signed at the candidate the block's models make, and the server's step and global model
    are what those gradients make of them."""
    size = len(block.feature_names) + 1
    for name in block.cli:
        update = block.client_model[name]
        if len(update.gradient) != size or len(update.probe_gradient) != size:
            raise ChainError(position, f"{name}'s gradients must have {size} numbers each")
    candidate = probe_point(block.cli, block.client_model)
    if genesis.signed:
        participants = genesis.run.participants
        for name in block.cli:
            update = block.client_model[name]
            message = probe_message(
                genesis_hash=genesis.hash,
                index=block.index,
                previous_hash=block.previous_hash,
                name=name,
                candidate=candidate,
                gradient=update.probe_gradient,
            )
            if not signature_holds(participants[name], update.probe_signature, message):
                raise ChainError(
                    position,
                    f"{name}'s signature on its probe gradient does not "
                    "verify at the round's candidate",
                )
    try:
        model, search = corrected_step(previous, block.cli, block.client_model)
    except ValueError as error:
        raise ChainError(position, f"the step cannot be worked out: {error}") from None
    if model != block.server_model:
        raise ChainError(
            position,
            "server_model is not the step scaffold takes from the clients' models and gradients",
        )
    if _bits(search) != _bits(block.search):
        raise ChainError(position, "the recorded search is not the step scaffold takes")


def _bits(record: dict) -> dict:
    """RECORD's numbers as their exact bits, so 0.0 and -0.0 differ as they do under the hash."""
    return {
        name: tuple(v.hex() for v in value) if isinstance(value, tuple) else value.hex()
        for name, value in record.items()
    }


def _verify_contributors(position: int, previous: Block, block: Block, genesis: Block) -> None:
    """Every update and attestation in BLOCK is signed by a participant the genesis admitted."""
    participants = genesis.run.participants
    for name in [*block.cli, *block.attestations, *block.missing]:
        if name not in participants:
            raise ChainError(position, f"{name} is not a participant admitted in the genesis")
    for name in block.cli:
        message = update_message(
            genesis_hash=genesis.hash,
            index=block.index,
            previous_hash=block.previous_hash,
            name=name,
            update=block.client_model[name],
        )
        if not signature_holds(participants[name], block.client_model[name].signature, message):
            raise ChainError(position, f"{name}'s signature on its update does not verify")
    attested = attestation_message(genesis_hash=genesis.hash, block=previous)
    for name, signature in block.attestations.items():
        if not signature_holds(participants[name], signature, attested):
            raise ChainError(
                position, f"{name}'s attestation of block {previous.index} does not verify"
            )
    # Every participant is accounted for: it contributed (or, closing, attested), or is missing.
    present = set(block.cli if block.cli else block.attestations)
    if present & set(block.missing):
        both = ", ".join(sorted(present & set(block.missing)))
        raise ChainError(position, f"{both} both took part and is recorded missing")
    if unaccounted := set(participants) - present - set(block.missing):
        names = ", ".join(sorted(unaccounted))
        raise ChainError(position, f"{names} neither took part nor is recorded missing")
    if set(block.attestations) - set(block.cli) and block.cli:
        raise ChainError(position, "an attestation comes from a client with no update here")


def _verify_server_signature(position: int, block: Block, genesis: Block) -> None:
    key = genesis.run.server_key
    if not block.server_signature:
        raise ChainError(position, "the server's signature is missing")
    if not signature_holds(key, block.server_signature, block_message(block.hash)):
        raise ChainError(position, "the server's signature does not verify")


def _verify_seal(position: int, block: Block, now: float | None) -> None:
    if compute_hash(block) != block.hash:
        raise ChainError(position, "hash does not match the block's contents")
    if not meets_difficulty(block.hash, block.difficulty):
        raise ChainError(position, f"hash does not meet difficulty {block.difficulty} bits")
    now = time.time() if now is None else now
    if block.timestamp > now + MAX_CLOCK_AHEAD_S:
        raise ChainError(
            position,
            f"dated {block.timestamp - now:.0f} s ahead of this clock "
            f"(more than {MAX_CLOCK_AHEAD_S:g} s)",
        )


def _verify_model_sizes(position: int, block: Block) -> None:
    expected = len(block.feature_names)
    models = [("server_model", block.server_model)]
    models += [(f"client {name}", block.client_model[name].model) for name in block.cli]
    for where, model in models:
        if model.n_features != expected:
            raise ChainError(
                position, f"{where} has {model.n_features} weights for {expected} features"
            )
