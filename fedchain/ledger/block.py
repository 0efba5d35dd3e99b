"""A block of the chain, its canonical bytes and its hash.

This is the only place that knows the byte layout the hash is computed over. Every field is in it,
the server's model included: the original application hashed the clients' models but not the
server's, so the global model could be replaced without the chain noticing. Format 2 adds who took
part: the run's keys in the genesis, each client's signature and training settings, and the
clients' attestations of the block before; the server's signature of the hash sits beside it.
Format 3 is format 2 for a run whose rule is not FedAvg: every block also records the rule's
parameters and what it chose (which clients Krum kept, which values were trimmed), and a client's
update what it sent beyond its model; a FedAvg run is still written in format 2, bit for bit.
Format 4 is format 3 for the drift-corrected rule (scaffold): each update also carries the
client's gradient at the model it trained from and, signed apart, its gradient at the round's
candidate, and the block records the server's step (learning/scaffold.py), all under the hash.
Format 5 is format 3 for Krum as it is now: every block also records each feature's scale, which
Krum's distances are measured in, and the models Krum keeps are averaged with equal weights (a
format-3 Krum chain, written before, averaged them by row counts and measured raw weights, and
still verifies so).
Formats 6 to 9 are formats 2 to 5 for a run with differential privacy: the genesis also records
the public bounds every client clips to, the most ε the run admits, and each private client's
signed statement of its mechanism, ε and δ (learning/privacy.py). A block's layout is that of
its public twin; the version alone says which.
Formats 10 to 17 are formats 2 to 9 with the genesis also naming the column the run predicts and
its unit (say, ln(USD per year)), so a prediction read off the chain says what it is. The two are
hashed after everything else, so each twin's bytes are those of the format it extends.
"""

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from fedchain.checks import MAX_INT, MAX_U64, check_int, check_name, check_names
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.encoding import (
    F64,
    U8,
    U16,
    U32,
    U64,
    pack_floats,
    pack_hex,
    pack_model,
    pack_string,
    pack_strings,
)

FORMAT_UNSIGNED = 1  # the first format: tamper-evident, but nothing says who contributed
FORMAT_SIGNED = 2
FORMAT_RULES = 3  # format 2, plus the rule's parameters and choices, for a rule other than FedAvg
FORMAT_CORRECTED = 4  # format 3, plus the gradients and the server's step of a scaffold run
FORMAT_SCALED = 5  # format 3, plus each feature's scale, for Krum (equal weights, scaled distance)
# The same, with the genesis also recording the run's privacy terms (PrivacyTerms).
PRIVATE_TWIN = {FORMAT_SIGNED: 6, FORMAT_RULES: 7, FORMAT_CORRECTED: 8, FORMAT_SCALED: 9}
PUBLIC_TWIN = {private: public for public, private in PRIVATE_TWIN.items()}
# The same again (2 to 9), with the genesis also recording the run's target (TargetRecord).
TARGET_TWIN = {untargeted: untargeted + 8 for untargeted in range(FORMAT_SIGNED, 10)}
UNTARGETED_TWIN = {targeted: untargeted for untargeted, targeted in TARGET_TWIN.items()}
FORMAT_VERSION = FORMAT_SIGNED  # what new FedAvg chains are written in
ZERO_HASH = "0" * 64
MAX_DIFFICULTY_BITS = 64  # far beyond what anyone mines on a CPU; keeps the target in range
HASH_HEX, KEY_HEX, SIGNATURE_HEX = 64, 64, 128  # lengths in hex digits
MAX_REASON_CHARS = 300
MAX_UNIT_CHARS = 200
MAX_SCHEMA_CHARS = 1 << 22  # a schema's CSV: about 100,000 columns' bounds
_MAGIC = b"FLBC"
_U16_MAX = 2**16 - 1
_HEX_DIGITS = "0123456789abcdef"


@dataclass(frozen=True)
class TrainingSettings:
    """How a client searched in a round, so anyone can rerun its training from the chain."""

    seed: int
    generations: int
    population: int

    def __post_init__(self) -> None:
        check_int(self.seed, 0, MAX_INT, "a training seed")
        check_int(self.generations, 1, MAX_INT, "generations")
        check_int(self.population, 1, MAX_INT, "population")


@dataclass(frozen=True)
class PrivacyStatement:
    """A client's word, under its signature, on how it protects each of its rows: it trains on
    its sums released once by MECHANISM with (EPSILON, DELTA)-differential privacy, clipped to
    the run's schema."""

    mechanism: str
    epsilon: float
    delta: float
    signature: str  # 128 hex digits, over signatures.privacy_message(...)

    def __post_init__(self) -> None:
        check_name(self.mechanism, "a privacy mechanism")
        for name, value in (("epsilon", self.epsilon), ("delta", self.delta)):
            if type(value) is not float or not math.isfinite(value) or value <= 0:
                raise ValueError(f"a privacy statement's {name} must be a positive float")
        check_hex("a privacy statement's signature", self.signature, SIGNATURE_HEX)


@dataclass(frozen=True)
class PrivacyTerms:
    """What a private run's genesis fixes: the public bounds every client clips to (the schema's
    canonical CSV, learning/schema.py), the most ε a client may spend (None: no limit), and each
    private client's statement; a client without one keeps no promise about its rows."""

    schema: str
    max_epsilon: float | None
    statements: dict[str, PrivacyStatement]

    def __post_init__(self) -> None:
        if not isinstance(self.schema, str) or not 0 < len(self.schema) <= MAX_SCHEMA_CHARS:
            raise ValueError(f"the schema must be 1..{MAX_SCHEMA_CHARS} characters of CSV")
        if self.max_epsilon is not None and (
            type(self.max_epsilon) is not float
            or not math.isfinite(self.max_epsilon)
            or self.max_epsilon <= 0
        ):
            raise ValueError("max_epsilon must be a positive float or None")
        if not isinstance(self.statements, dict):
            raise TypeError("statements must map names to PrivacyStatement")
        check_names(tuple(self.statements), "privacy statements")
        for statement in self.statements.values():
            if not isinstance(statement, PrivacyStatement):
                raise TypeError("statements must map names to PrivacyStatement")


@dataclass(frozen=True)
class TargetRecord:
    """The column a run predicts and its unit ("" where the run did not state one), so that a
    prediction off the chain says what it is: the bundled target is a log, not dollars."""

    column: str
    unit: str = ""

    def __post_init__(self) -> None:
        check_name(self.column, "the target column")
        check_unit(self.unit)


def check_unit(value: object) -> str:
    """Return VALUE if it can be a target's unit: 0..200 printable characters ("": not stated)."""
    if not isinstance(value, str) or len(value) > MAX_UNIT_CHARS:
        raise ValueError(f"the target's unit must be 0..{MAX_UNIT_CHARS} characters")
    if not value.isprintable():
        raise ValueError("the target's unit must be printable")
    return value


@dataclass(frozen=True)
class RunRecord:
    """What a format-2 genesis fixes for the whole run: its length, seed and keys (and in
    formats 6 to 9, its privacy terms; in formats 10 to 17, its target)."""

    rounds: int
    seed: int
    server_key: str  # the server's Ed25519 public key, 64 hex digits
    participants: dict[str, str]  # each admitted client's name and public key
    min_clients: int = 1  # the fewest contributions a round block may hold (the quorum)
    privacy: PrivacyTerms | None = None
    target: TargetRecord | None = None

    def __post_init__(self) -> None:
        check_int(self.rounds, 1, MAX_INT, "rounds")
        check_int(self.min_clients, 1, MAX_INT, "min_clients")
        check_int(self.seed, 0, MAX_INT, "the run's seed")
        check_hex("server_key", self.server_key, KEY_HEX)
        if not isinstance(self.participants, dict):
            raise TypeError("participants must map names to public keys")
        check_names(tuple(self.participants), "participants")
        for name, key in self.participants.items():
            check_hex(f"{name}'s key", key, KEY_HEX)
        if len(set(self.participants.values())) != len(self.participants):
            raise ValueError("two participants share one public key")
        if self.privacy is not None:
            if not isinstance(self.privacy, PrivacyTerms):
                raise TypeError("privacy must be PrivacyTerms")
            if strangers := set(self.privacy.statements) - set(self.participants):
                raise ValueError(
                    f"privacy statements of clients not admitted: {', '.join(sorted(strangers))}"
                )
        if self.target is not None and not isinstance(self.target, TargetRecord):
            raise TypeError("target must be a TargetRecord")


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution to a round: its trained model and how many rows it trained on,
    and in format 2 how it trained and its signature over all of that."""

    model: LinearModel
    n_samples: int
    training: TrainingSettings | None = None
    signature: str = ""  # 128 hex digits, over signatures.update_message(...)
    # Format 4: the gradients of the client's MSE (weights, then bias) at the model it trained
    # from (under SIGNATURE) and at the round's candidate (under PROBE_SIGNATURE, sent later).
    gradient: tuple[float, ...] = ()
    probe_gradient: tuple[float, ...] = ()
    probe_signature: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, LinearModel):
            raise TypeError("a client update's model must be a LinearModel")
        check_int(self.n_samples, 1, MAX_U64, "n_samples")
        if self.training is not None and not isinstance(self.training, TrainingSettings):
            raise TypeError("training must be TrainingSettings")
        if self.signature:
            check_hex("a client's signature", self.signature, SIGNATURE_HEX)
        _check_numbers(
            "gradients", {"at_start": self.gradient, "at_probe": self.probe_gradient}, single=False
        )
        if self.probe_signature:
            check_hex("a client's probe signature", self.probe_signature, SIGNATURE_HEX)

    @property
    def corrected(self) -> bool:
        """Whether it carries what a format-4 update must: both gradients, signed."""
        return bool(self.gradient and self.probe_gradient and self.probe_signature)

    @property
    def signed(self) -> bool:
        return self.training is not None and bool(self.signature)


@dataclass(frozen=True)
class Block:
    index: int
    timestamp: float  # seconds since the Unix epoch
    previous_hash: str  # 64 hex digits; all zeros for the genesis block
    difficulty: int  # leading zero bits the hash must have
    feature_names: tuple[str, ...]  # what each weight multiplies, so a model is usable off-chain
    aggregation: str  # the rule that made server_model from client_model
    cli: tuple[str, ...]  # contributing clients, in the order they are hashed and averaged
    client_model: dict[str, ClientUpdate]
    server_model: LinearModel
    nonce: int = 0
    hash: str = ""  # empty until the block is sealed
    version: int = FORMAT_VERSION
    run: RunRecord | None = None  # format 2, genesis only
    # Format 2: clients' signatures over the previous block's hash, sent with their updates.
    attestations: dict[str, str] = field(default_factory=dict)
    # Format 2: the participants that did not contribute to this block, and why (disconnected,
    # timed out, refused: reason), so the chain records who was there.
    missing: dict[str, str] = field(default_factory=dict)
    server_signature: str = ""  # format 2: over the hash, so not under it
    # Format 3: the rule's parameters (fixed by the genesis, repeated in every block), and what
    # the rule chose in this block, per client in `cli` order (see learning/aggregation.py).
    parameters: dict[str, float] = field(default_factory=dict)
    choice: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Format 4: the server's step (learning/scaffold.py SearchRecord), in every round block.
    search: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Format 5: what Krum multiplies each feature's weight by before it measures a distance
    # (fixed by the genesis, repeated in every block), so its distances mean a change of
    # prediction (learning/aggregation.py feature_scale).
    scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # Refuse a malformed block at construction, so nothing downstream can hash one.
        check_int(self.version, 0, _U16_MAX, "version")
        check_int(self.index, 0, MAX_U64, "index")
        if not isinstance(self.timestamp, float) or not math.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be a finite float, not {self.timestamp!r}")
        check_hex("previous_hash", self.previous_hash, HASH_HEX)
        check_int(self.difficulty, 0, MAX_DIFFICULTY_BITS, "difficulty")
        _check_tuple("feature_names", self.feature_names)
        _check_tuple("cli", self.cli)
        check_names(self.feature_names, "feature_names")
        check_name(self.aggregation, "aggregation")
        check_names(self.cli, "cli")
        if not isinstance(self.client_model, dict) or set(self.client_model) != set(self.cli):
            raise ValueError("cli must name exactly the clients in client_model")
        for update in self.client_model.values():
            if not isinstance(update, ClientUpdate):
                raise TypeError("client_model values must be ClientUpdate")
        if not isinstance(self.server_model, LinearModel):
            raise TypeError("server_model must be a LinearModel")
        check_int(self.nonce, 0, MAX_U64, "nonce")
        if self.hash:
            check_hex("hash", self.hash, HASH_HEX)
        self._check_format()

    def _check_format(self) -> None:
        if self.run is not None and not isinstance(self.run, RunRecord):
            raise TypeError("run must be a RunRecord")
        if not isinstance(self.attestations, dict):
            raise TypeError("attestations must map names to signatures")
        check_names(tuple(self.attestations), "attestations")
        for name, signature in self.attestations.items():
            check_hex(f"{name}'s attestation", signature, SIGNATURE_HEX)
        if not isinstance(self.missing, dict):
            raise TypeError("missing must map names to reasons")
        check_names(tuple(self.missing), "missing")
        for name, reason in self.missing.items():
            if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_CHARS:
                raise ValueError(f"{name}'s reason for missing must be 1..{MAX_REASON_CHARS} chars")
            if not reason.isprintable():
                raise ValueError(f"{name}'s reason for missing must be printable")
        if self.server_signature:
            check_hex("server_signature", self.server_signature, SIGNATURE_HEX)
        _check_numbers("parameters", self.parameters, single=True)
        _check_numbers("choice", self.choice, single=False)
        _check_numbers("search", self.search, single=False)
        if not isinstance(self.scale, tuple):  # a list could change under the hash
            raise TypeError("scale must be a tuple of floats")
        if not all(type(v) is float and math.isfinite(v) for v in self.scale):
            raise ValueError("scale must hold finite floats")
        sections = self.sections
        for section in SECTIONS:
            section.check(self, section in sections)

    @property
    def sections(self) -> tuple["Section", ...]:
        """What this block's format carries beyond format 1's fields, in the order it is hashed
        (none for a version this program does not know, which verification refuses)."""
        return FORMAT_SECTIONS.get(self.version, ())

    @property
    def signed(self) -> bool:
        return SIGNED in self.sections

    @property
    def layout(self) -> int:
        """The format whose block fields this block carries (1 to 5): a private or targeted
        format's public, untargeted twin."""
        return layout_of(self.version)

    @property
    def private(self) -> bool:
        """Whether the run's genesis records privacy terms (formats 6 to 9 and 14 to 17)."""
        return PRIVACY in self.sections

    @property
    def targeted(self) -> bool:
        """Whether the run's genesis records its target (formats 10 to 17)."""
        return TARGET in self.sections

    def rule_options(self) -> dict:
        """What the rule needs besides its parameters, as this block's format defines it: the
        features' scale, and whether Krum's kept models are averaged by their row counts (as
        format 3 did) or with equal weights."""
        return {"scale": self.scale or None, "kept_by_rows": self.version == FORMAT_RULES}

    def sample_counts(self) -> dict[str, int]:
        """Each contributing client's row count."""
        return {name: self.client_model[name].n_samples for name in self.cli}


def body_digest(block: Block) -> bytes:
    """SHA-256 of every field but the nonce and the hash, in a fixed binary encoding."""
    # Binary, not JSON text: float64 bits are exact (no '1' versus '1.0', no lost digits),
    # every string and vector carries its length so no two blocks share an encoding, and
    # clients are written in `cli` order, which is itself hashed. Format 1's fields come first,
    # then each section the format adds, so every format hashes exactly what it always did.
    sections = block.sections
    parts = [
        _MAGIC,
        U16.pack(block.version),
        U64.pack(block.index),
        F64.pack(block.timestamp),
        bytes.fromhex(block.previous_hash),
        U16.pack(block.difficulty),
        pack_strings(block.feature_names),
        pack_string(block.aggregation),
        pack_strings(block.cli),
    ]
    for name in block.cli:
        update = block.client_model[name]
        parts += [U64.pack(update.n_samples), pack_model(update.model)]
        for section in sections:
            parts += section.pack_update(update)
    parts.append(pack_model(block.server_model))
    for section in sections:
        parts += section.pack_block(block)
    return hashlib.sha256(b"".join(parts)).digest()


def compute_hash(block: Block) -> str:
    """The block's hash: SHA-256 over the body's digest and the nonce."""
    return hashlib.sha256(body_digest(block) + U64.pack(block.nonce)).hexdigest()


# The formats. Each is format 1's fields and the sections it adds, hashed in this order after
# format 1's, so a format's bytes never change when another is added.


@dataclass(frozen=True)
class Section:
    """Fields that some block formats carry beyond format 1's: how they are hashed (after each
    client's model, and after the server's) and what a block holds with them and without."""

    name: str
    pack_update: Callable[[ClientUpdate], list[bytes]]
    pack_block: Callable[[Block], list[bytes]]
    check: Callable[[Block, bool], None]  # (block, whether its format carries the section)


def _no_bytes(_: object) -> list[bytes]:
    return []


def _pack_training(update: ClientUpdate) -> list[bytes]:
    training = update.training
    return [
        U64.pack(training.seed),
        U64.pack(training.generations),
        U64.pack(training.population),
        pack_hex(update.signature),
    ]


def _pack_signed(block: Block) -> list[bytes]:
    parts = [U32.pack(len(block.attestations))]
    for name in sorted(block.attestations):
        parts += [pack_string(name), pack_hex(block.attestations[name])]
    parts.append(U32.pack(len(block.missing)))
    for name in sorted(block.missing):
        parts += [pack_string(name), pack_string(block.missing[name])]
    parts.append(U8.pack(block.run is not None))
    if block.run is not None:
        run = block.run
        parts += [U64.pack(run.rounds), U64.pack(run.seed), pack_hex(run.server_key)]
        parts.append(U64.pack(run.min_clients))
        parts.append(U32.pack(len(run.participants)))
        for name in sorted(run.participants):
            parts += [pack_string(name), pack_hex(run.participants[name])]
    return parts


def _check_signed(block: Block, carried: bool) -> None:
    if not carried:
        if (
            block.run
            or block.attestations
            or block.missing
            or block.server_signature
            or any(update.training or update.signature for update in block.client_model.values())
        ):
            raise ValueError(f"format {block.version} blocks carry no keys or signatures")
        return
    if (block.run is None) != (block.index != 0):
        raise ValueError("a format-2 genesis, and only the genesis, records the run")
    for name, update in block.client_model.items():
        if not update.signed:
            raise ValueError(f"{name}'s update lacks its signature or training settings")


def _pack_privacy(block: Block) -> list[bytes]:
    # Right after the run's participants, which end the signed section; only a genesis has them.
    if block.run is None:
        return []
    privacy = block.run.privacy
    limit = privacy.max_epsilon
    parts = [pack_string(privacy.schema), U8.pack(limit is not None), F64.pack(limit or 0.0)]
    parts.append(U32.pack(len(privacy.statements)))
    for name in sorted(privacy.statements):
        statement = privacy.statements[name]
        parts += [pack_string(name), pack_string(statement.mechanism)]
        parts += [F64.pack(statement.epsilon), F64.pack(statement.delta)]
        parts.append(pack_hex(statement.signature))
    return parts


def _check_privacy(block: Block, carried: bool) -> None:
    if block.run is not None and carried != (block.run.privacy is not None):
        raise ValueError(
            f"a genesis of format {formats_with(PRIVACY)}, and only one, records privacy terms"
        )


def _pack_target(block: Block) -> list[bytes]:
    # Last of all a genesis hashes, so a targeted format's bytes begin with its twin's.
    if block.run is None:
        return []
    target = block.run.target
    return [pack_string(target.column), pack_string(target.unit)]


def _check_target(block: Block, carried: bool) -> None:
    if block.run is not None and carried != (block.run.target is not None):
        raise ValueError(
            f"a genesis of format {formats_with(TARGET)}, and only one, records the run's target"
        )


def _pack_rules(block: Block) -> list[bytes]:
    parts = [U32.pack(len(block.parameters))]
    for name in sorted(block.parameters):
        parts += [pack_string(name), F64.pack(block.parameters[name])]
    parts.append(U32.pack(len(block.choice)))
    for name in sorted(block.choice):
        parts += [pack_string(name), pack_floats(block.choice[name])]
    return parts


def _check_rules(block: Block, carried: bool) -> None:
    if not carried and (block.parameters or block.choice):
        raise ValueError(f"format {block.version} blocks carry no rule parameters or choices")


def _pack_corrected(block: Block) -> list[bytes]:
    # Each client's gradients come here, after the rule's section, not beside its model: so a
    # format-4 body begins with format 3's.
    parts = []
    for name in block.cli:
        update = block.client_model[name]
        parts += [pack_floats(update.gradient), pack_floats(update.probe_gradient)]
        parts.append(pack_hex(update.probe_signature))
    parts.append(U32.pack(len(block.search)))
    for name in sorted(block.search):
        parts += [pack_string(name), pack_floats(block.search[name])]
    return parts


def _check_corrected(block: Block, carried: bool) -> None:
    updates = block.client_model
    if carried:
        for name, update in updates.items():
            if not update.corrected:
                raise ValueError(f"{name}'s update lacks its gradients or probe signature")
    elif block.search or any(
        u.gradient or u.probe_gradient or u.probe_signature for u in updates.values()
    ):
        raise ValueError(f"format {block.version} blocks carry no gradients or search")


def _pack_scale(block: Block) -> list[bytes]:
    return [pack_floats(block.scale)]


def _check_scale(block: Block, carried: bool) -> None:
    if carried != bool(block.scale):
        raise ValueError(
            f"blocks of format {formats_with(SCALED)}, and only they, record each feature's scale"
        )


SIGNED = Section("signed", _pack_training, _pack_signed, _check_signed)
PRIVACY = Section("privacy", _no_bytes, _pack_privacy, _check_privacy)
RULES = Section("rules", _no_bytes, _pack_rules, _check_rules)
CORRECTED = Section("corrected", _no_bytes, _pack_corrected, _check_corrected)
SCALED = Section("scaled", _no_bytes, _pack_scale, _check_scale)
TARGET = Section("target", _no_bytes, _pack_target, _check_target)
SECTIONS = (SCALED, RULES, CORRECTED, SIGNED, PRIVACY, TARGET)  # checked in this order

# Every format this program reads and writes, and the sections it adds to format 1's fields.
# A new format is one entry here (and its golden chain in tests/fixtures/).
FORMAT_SECTIONS: dict[int, tuple[Section, ...]] = {
    FORMAT_UNSIGNED: (),
    FORMAT_SIGNED: (SIGNED,),
    FORMAT_RULES: (SIGNED, RULES),
    FORMAT_CORRECTED: (SIGNED, RULES, CORRECTED),
    FORMAT_SCALED: (SIGNED, RULES, SCALED),
    PRIVATE_TWIN[FORMAT_SIGNED]: (SIGNED, PRIVACY),
    PRIVATE_TWIN[FORMAT_RULES]: (SIGNED, PRIVACY, RULES),
    PRIVATE_TWIN[FORMAT_CORRECTED]: (SIGNED, PRIVACY, RULES, CORRECTED),
    PRIVATE_TWIN[FORMAT_SCALED]: (SIGNED, PRIVACY, RULES, SCALED),
}
FORMAT_SECTIONS |= {
    TARGET_TWIN[untargeted]: (*FORMAT_SECTIONS[untargeted], TARGET) for untargeted in TARGET_TWIN
}
KNOWN_FORMATS = tuple(FORMAT_SECTIONS)


def layout_of(version: int) -> int:
    """The format whose block fields a VERSION block carries: without its target, and public."""
    untargeted = UNTARGETED_TWIN.get(version, version)
    return PUBLIC_TWIN.get(untargeted, untargeted)


def formats_with(section: Section) -> str:
    """The formats that carry SECTION, as a reader says them: '6 to 9 or 14 to 17'."""
    return spans([version for version, sections in FORMAT_SECTIONS.items() if section in sections])


def formats_laid_out_as(layout: int) -> str:
    """The formats whose blocks carry format LAYOUT's fields: '4, 8, 12 or 16'."""
    return spans([version for version in FORMAT_SECTIONS if layout_of(version) == layout])


def spans(numbers: list[int]) -> str:
    """NUMBERS, ascending, with each run of three or more consecutive ones as 'a to b'."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    said = [f"{run[0]} to {run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs]
    return said[0] if len(said) == 1 else f"{', '.join(said[:-1])} or {said[-1]}"


def check_hex(name: str, value: object, digits: int) -> str:
    """Return VALUE if it is DIGITS lowercase hex digits (a hash, a key or a signature)."""
    if not isinstance(value, str) or len(value) != digits or value.strip(_HEX_DIGITS):
        shown = value[:20] + "…" if isinstance(value, str) and len(value) > 20 else value
        raise ValueError(f"{name} must be {digits} lowercase hex digits, not {shown!r}")
    return value


def _check_numbers(what: str, record: object, *, single: bool) -> None:
    """RECORD maps names to one finite float (SINGLE) or to a tuple of them."""
    if not isinstance(record, dict):
        raise TypeError(f"{what} must map names to numbers")
    check_names(tuple(record), what)
    for name, value in record.items():
        if not single and not isinstance(value, tuple):  # a list could change under the hash
            raise TypeError(f"{what}[{name!r}] must be a tuple of floats")
        for number in [value] if single else value:
            if type(number) is not float or not math.isfinite(number):
                raise ValueError(f"{what}[{name!r}] must hold finite floats")


def _check_tuple(name: str, values: object) -> None:
    # A block is immutable; a list here could change under its hash.
    if not isinstance(values, tuple):
        raise TypeError(f"{name} must be a tuple of strings")
