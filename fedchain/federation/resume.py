"""What a restarted server must agree with before it goes on with a chain: the settings its
genesis recorded. Anything that would change what the chain means (the columns, the work, the
rule, the rounds, the seed, the keys, who takes part and how many must) is compared, and every
difference is named with the flag that sets it."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedchain.learning.aggregation import FEDAVG
from fedchain.learning.dataset import column_difference
from fedchain.ledger.block import Block


@dataclass(frozen=True)
class RunSettings:
    """The settings a server was started with, as they bear on the chain."""

    difficulty: int
    rounds: int
    seed: int
    server_key: str
    n_clients: int
    min_clients: int
    features: Sequence[str] | None = None  # the test data's columns; None: no test data
    authorized_keys: Mapping[str, str] | None = None  # None: open enrolment
    aggregation: str = FEDAVG
    aggregation_parameters: Mapping[str, float] | None = None  # None: none
    schema: str | None = None  # the --schema's canonical text; None: not a private run
    max_epsilon: float | None = None


def differences(genesis: Block, wanted: RunSettings) -> list[str]:
    """Each way WANTED departs from what GENESIS recorded, in words; empty if none."""
    run = genesis.run
    found = []

    def compare(flag: str, ours: object, recorded: object) -> None:
        if ours != recorded:
            found.append(f"{flag} is {ours}, but the chain's genesis records {recorded}")

    compare("--difficulty", wanted.difficulty, genesis.difficulty)
    compare("--rounds", wanted.rounds, run.rounds)
    compare("--seed", wanted.seed, run.seed)
    compare("--clients", wanted.n_clients, len(run.participants))
    compare("--min-clients", wanted.min_clients, run.min_clients)
    compare("--aggregation", wanted.aggregation, genesis.aggregation)
    compare(
        "the rule's parameters (--byzantine, --proximal)",
        dict(wanted.aggregation_parameters or {}),
        genesis.parameters,
    )
    privacy = run.privacy
    if wanted.schema != (None if privacy is None else privacy.schema):
        found.append(
            "--schema differs from the bounds the chain's genesis records"
            if privacy is not None and wanted.schema is not None
            else f"--schema is {'given' if wanted.schema else 'not given'}, but the "
            f"chain's genesis records {'bounds' if privacy else 'none'}"
        )
    compare("--max-epsilon", wanted.max_epsilon, None if privacy is None else privacy.max_epsilon)
    if wanted.server_key != run.server_key:
        found.append(
            f"the server key {wanted.server_key[:16]}… (--key) is not the one the chain was "
            f"made with, {run.server_key[:16]}…"
        )
    features = wanted.features
    if features is not None and (difference := column_difference(genesis.feature_names, features)):
        found.append(f"the --test data's columns differ from the chain's: {difference}")
    if wanted.authorized_keys is not None and dict(wanted.authorized_keys) != run.participants:
        names = sorted(set(wanted.authorized_keys) ^ set(run.participants)) or sorted(
            name
            for name in run.participants
            if wanted.authorized_keys[name] != run.participants[name]
        )
        found.append(
            "--authorized-keys differs from the clients the chain's genesis admitted "
            f"(as to {', '.join(names[:10])})"
        )
    return found
