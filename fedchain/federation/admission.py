"""Who may join a run: the checks of a registration, before the run (authorized keys, one key
per name, target, columns, privacy) and during it (a client of the genesis, with its key and its
rows). Each check raises Refusal with the reason the client is sent."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedchain.federation.plan import RunPlan
from fedchain.learning.dataset import column_difference
from fedchain.ledger.block import PrivacyStatement
from fedchain.ledger.chain import Chain
from fedchain.ledger.verification import schema_fault, statement_fault
from fedchain.trust.handshake import verify_login


class Refusal(Exception):
    """A registration or message the server turns down, with the reason sent to that client."""


@dataclass(frozen=True, eq=False)
class Member:
    """A client that has registered, on one connection."""

    conn: int
    address: str
    name: str
    public_key: str
    n_samples: int
    features: tuple[str, ...]
    privacy: PrivacyStatement | None = None  # a private client's signed statement


@dataclass(frozen=True)
class Applicant:
    """Who a newcomer is: its connection, and its registration's first message."""

    conn: int
    address: str
    challenge: bytes
    messages: Sequence[dict]


def full(plan: RunPlan) -> str:
    n = plan.n_clients
    return f"the run is full ({n} client{'s' if n != 1 else ''})"


def check_registration(
    applicant: Applicant,
    *,
    plan: RunPlan,
    server_key: str,
    chain: Chain | None,
    joined: Sequence[Member],
    bound_keys: Mapping[str, str],
    run_features: tuple[str, ...],
) -> Member:
    """The member APPLICANT becomes, or Refusal. CHAIN is None before the run begins; JOINED
    are the clients that have joined so far, BOUND_KEYS each name's first key (open enrolment)."""
    message, *more = applicant.messages
    if message["type"] != "register":
        raise Refusal(f"expected a register message first, not {message['type']!r}")
    if more:
        raise Refusal("sent more than its registration before it was welcomed")
    name, features = message["name"], tuple(message["feature_names"])
    key = message["public_key"]
    if chain is None and len(joined) >= plan.n_clients:
        raise Refusal(full(plan))
    # The login signs this connection's challenge and this server's key: a recorded login
    # cannot be replayed here, nor one made for another server relayed to this one.
    if not verify_login(key, message["login_signature"], server_key, applicant.challenge, name):
        raise Refusal(f"{name}'s login signature does not verify for key {key[:16]}…")
    if chain is None:
        _check_newcomer(name, key, plan, joined, bound_keys)
    else:
        _check_returning(name, key, message["n_samples"], chain)
    _check_target(name, message.get("target"), features, plan)
    privacy = _check_privacy(name, key, features, message.get("privacy"), plan, server_key, chain)
    # Columns are matched by name: a client may hold them in any order.
    if run_features and (difference := column_difference(run_features, features)):
        raise Refusal(f"{name}'s columns differ from the run's: {difference}")
    return Member(
        applicant.conn,
        applicant.address,
        name,
        key,
        message["n_samples"],
        features,
        privacy,
    )


def _check_newcomer(
    name: str,
    key: str,
    plan: RunPlan,
    joined: Sequence[Member],
    bound_keys: Mapping[str, str],
) -> None:
    """Before the run: may NAME join with KEY?"""
    if plan.authorized_keys is not None:
        if name not in plan.authorized_keys:
            raise Refusal(f"{name!r} is not in the authorized keys")
        if plan.authorized_keys[name] != key:
            raise Refusal(
                f"{name}'s key {key[:16]}… is not the one authorized for that name "
                f"({plan.authorized_keys[name][:16]}…)"
            )
    elif bound_keys.get(name, key) != key:
        raise Refusal(f"{name!r} first joined with key {bound_keys[name][:16]}…, not {key[:16]}…")
    if any(m.name == name for m in joined):
        raise Refusal(f"a client named {name!r} has already joined")
    if any(m.public_key == key for m in joined):
        raise Refusal(f"the key {key[:16]}… has already joined under another name")


def _check_returning(name: str, key: str, n_samples: int, chain: Chain) -> None:
    """During the run: is this a client the genesis admitted, with its key and its rows?"""
    participants = chain.genesis.run.participants
    if name not in participants:
        raise Refusal(
            f"{name!r} is not a client of this run (its genesis admits only "
            f"{', '.join(sorted(participants))})"
        )
    if participants[name] != key:
        raise Refusal(
            f"{name}'s key {key[:16]}… is not the one this run admitted "
            f"({participants[name][:16]}…)"
        )
    recorded = chain.sample_counts.get(name)
    if recorded is not None and recorded != n_samples:
        # The count weighs the client's model in every average: it is fixed for the run.
        raise Refusal(f"{name} now has {n_samples} rows, but the chain records {recorded}")


def _check_target(name: str, offered: str | None, features: tuple[str, ...], plan: RunPlan) -> None:
    """A client that says which column it predicts must predict the run's: its model would
    otherwise be averaged with models of another quantity. One that does not say is let in,
    but none whose FEATURES hold the run's target: the first to join sets the run's features,
    and a genesis whose target is one of them does not verify."""
    if plan.target is None:
        return
    if offered is not None and offered != plan.target.column:
        raise Refusal(
            f"{name} predicts {offered!r} (its --target), but the run predicts "
            f"{plan.target.column!r}"
        )
    if plan.target.column in features:
        raise Refusal(f"{name}'s columns include the run's target {plan.target.column!r}")


def _check_privacy(
    name: str,
    key: str,
    features: tuple[str, ...],
    offered: dict | None,
    plan: RunPlan,
    server_key: str,
    chain: Chain | None,
) -> PrivacyStatement | None:
    """NAME's privacy statement, if this run has a schema: refused if the run's limit or the
    genesis (for a client coming back) says otherwise, or if its signature fails."""
    if plan.schema is None:
        if offered is not None:
            raise Refusal(
                f"{name} states a privacy guarantee, but this run has no schema "
                "(--schema) to clip to"
            )
        return None
    if fault := schema_fault(plan.schema, features):
        raise Refusal(f"{name}'s columns do not fit the run's schema: the {fault}")
    statement = (
        None
        if offered is None
        else PrivacyStatement(
            offered["mechanism"],
            offered["epsilon"],
            offered["delta"],
            offered["signature"].hex(),
        )
    )
    if chain is not None:
        if statement != chain.genesis.run.privacy.statements.get(name):
            raise Refusal(
                f"{name}'s privacy statement is not the one this run's genesis "
                "records (a private client reuses its one release)"
            )
        return statement
    fault = statement_fault(
        name,
        statement,
        participant_key=key,
        server_key=server_key,
        schema_digest=plan.schema.digest(),
        max_epsilon=plan.max_epsilon,
    )
    if fault:
        raise Refusal(fault)
    return statement
