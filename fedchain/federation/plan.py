"""A run's plan: what fixes the meaning of its chain (who takes part and how many must, the work,
the rounds, the seed, the rule, the columns, the target, the keys, the privacy terms), as one
frozen value made from the flags for a new run or from the genesis for a resumed one, and how two
plans differ."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedchain.learning.aggregation import FEDAVG
from fedchain.learning.dataset import column_difference
from fedchain.learning.schema import Schema, parse_schema
from fedchain.ledger.block import Block, TargetRecord


@dataclass(frozen=True)
class RunPlan:
    """The settings a run's genesis records, or will. None in FEATURES or AUTHORIZED_KEYS means
    not known yet: the first client sets the columns, and any key may join (open enrolment)."""

    n_clients: int
    min_clients: int  # the fewest updates a round may go on with (the quorum)
    rounds: int
    difficulty_bits: int
    seed: int
    server_key: str  # the server's Ed25519 public key, 64 hex digits
    aggregation: str = FEDAVG
    aggregation_parameters: Mapping[str, float] = field(default_factory=dict)
    features: tuple[str, ...] | None = None  # in the order the weights take
    authorized_keys: Mapping[str, str] | None = None  # name -> public key
    schema: Schema | None = None  # a private run's public bounds; None: not a private run
    max_epsilon: float | None = None  # the most ε a private client may join with; None: any
    target: TargetRecord | None = None  # what the run predicts; None: a chain that does not say

    def __post_init__(self) -> None:
        if not 1 <= self.min_clients <= self.n_clients:
            raise ValueError(
                f"min_clients {self.min_clients} must be 1..{self.n_clients} (the run's clients)"
            )

    @classmethod
    def from_genesis(cls, genesis: Block) -> "RunPlan":
        """The plan GENESIS records (a signed one: format 1 records too little)."""
        run = genesis.run
        if run is None:
            raise ValueError("a format-1 genesis records too little to make a run's plan")
        privacy = run.privacy
        return cls(
            n_clients=len(run.participants),
            min_clients=run.min_clients,
            rounds=run.rounds,
            difficulty_bits=genesis.difficulty,
            seed=run.seed,
            server_key=run.server_key,
            aggregation=genesis.aggregation,
            aggregation_parameters=genesis.parameters,
            features=tuple(genesis.feature_names),
            authorized_keys=run.participants,
            schema=None if privacy is None else parse_schema(privacy.schema),
            max_epsilon=None if privacy is None else privacy.max_epsilon,
            target=run.target,
        )


def differences(wanted: RunPlan, recorded: RunPlan) -> list[str]:
    """Each way WANTED (from the flags) departs from RECORDED (from a genesis), in words, named
    by the flag that sets it; empty if none. WANTED's unknown columns or keys are not compared."""
    found = []

    def compare(flag: str, ours: object, theirs: object) -> None:
        if ours != theirs:
            found.append(f"{flag} is {ours}, but the chain's genesis records {theirs}")

    compare("--difficulty", wanted.difficulty_bits, recorded.difficulty_bits)
    compare("--rounds", wanted.rounds, recorded.rounds)
    compare("--seed", wanted.seed, recorded.seed)
    compare("--clients", wanted.n_clients, recorded.n_clients)
    compare("--min-clients", wanted.min_clients, recorded.min_clients)
    compare("--aggregation", wanted.aggregation, recorded.aggregation)
    compare(
        "the rule's parameters (--byzantine, --proximal)",
        dict(wanted.aggregation_parameters),
        dict(recorded.aggregation_parameters),
    )
    ours, theirs = (None if s is None else s.canonical() for s in (wanted.schema, recorded.schema))
    if ours != theirs:
        found.append(
            "--schema differs from the bounds the chain's genesis records"
            if ours is not None and theirs is not None
            else f"--schema is {'given' if ours else 'not given'}, but the "
            f"chain's genesis records {'bounds' if theirs else 'none'}"
        )
    compare("--max-epsilon", wanted.max_epsilon, recorded.max_epsilon)
    # A chain from before formats 10 to 17 names no target: the run goes on without one.
    if wanted.target is not None and recorded.target is not None:
        compare("--target", repr(wanted.target.column), repr(recorded.target.column))
        compare("--target-unit", repr(wanted.target.unit), repr(recorded.target.unit))
    if wanted.server_key != recorded.server_key:
        found.append(
            f"the server key {wanted.server_key[:16]}… (--key) is not the one the chain was "
            f"made with, {recorded.server_key[:16]}…"
        )
    features = wanted.features
    if (
        features is not None
        and recorded.features is not None
        and (difference := column_difference(recorded.features, features))
    ):
        found.append(f"the --test data's columns differ from the chain's: {difference}")
    keys, admitted = wanted.authorized_keys, dict(recorded.authorized_keys or {})
    if keys is not None and dict(keys) != admitted:
        names = sorted(set(keys) ^ set(admitted)) or sorted(
            name for name in admitted if keys[name] != admitted[name]
        )
        found.append(
            "--authorized-keys differs from the clients the chain's genesis admitted "
            f"(as to {', '.join(names[:10])})"
        )
    return found
