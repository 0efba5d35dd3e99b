"""The messages of a run and their schemas: what each type carries, checked field by field.

Server -> client: challenge (in a private run, with its schema), welcome (then, for a client
joining late, the blocks it lacks), train, probe (scaffold runs: the round's candidate), block,
close, waiting, done, refused.
Client -> server: register (signing the challenge; a private client also states its privacy, and
a client may name the column it predicts), update, gradient (the answer to a probe), attest.
A refusal names the field and never echoes more of what the peer sent than a short, escaped
description.
"""

from collections.abc import Callable

import numpy as np

from fedchain.checks import (
    MAX_FEATURES,
    MAX_INT,
    MAX_MAGNITUDE,
    check_int,
    check_magnitude,
    check_name,
    check_names,
    describe,
    printable,
)

MAX_TEXT_CHARS = 1 << 26  # a block as JSON, or a reason; in practice the frame limit binds first
MAX_METRICS = 16
BUSY = "busy:"  # how a refusal worth retrying begins: the client tries again in its window
# A scaffold client answers at most this many probes a round: one, and one more after a client
# leaves (the candidate then changes). Each answer tells the server the client's curvature (its
# XᵀX) along one more direction; answered without limit, they would tell it all of XᵀX.
MAX_PROBES = 2


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol, with what was wrong."""


def _feature_names(value: object, what: str) -> tuple:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a list, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must name at least one feature")
    return check_names(value, what)


def _client_names(value: object, what: str) -> tuple:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a list, not {type(value).__name__}")
    return check_names(value, what)  # none at all is a list too


def _integer(low: int) -> Callable[[object, str], int]:
    def check(value: object, what: str) -> int:
        return check_int(value, low, MAX_INT, what)

    return check


def _vector(most: int) -> Callable[[object, str], np.ndarray]:
    def check(value: object, what: str) -> np.ndarray:
        if not isinstance(value, np.ndarray) or value.dtype != np.float64:
            raise TypeError(f"{what} must be a NumPy float64 array")
        if value.ndim != 1 or not 0 < value.size <= most:
            raise ValueError(f"{what} must be a vector of 1..{most} numbers, not {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{what} holds NaN or infinity")
        if np.max(np.abs(value)) > MAX_MAGNITUDE:
            raise ValueError(f"{what} holds a number larger than {MAX_MAGNITUDE:g}")
        return value

    return check


_weights = _vector(MAX_FEATURES)
_gradient = _vector(MAX_FEATURES + 1)  # one number per weight, and one for the bias


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} must be a string of at most {MAX_TEXT_CHARS} characters")
    if not value.isprintable():
        raise ValueError(f"{what} must be printable text on one line")
    return value


def _metrics(value: object, what: str) -> dict:
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise ValueError(f"{what} must be a dict of at most {MAX_METRICS} named numbers")
    for key, number in value.items():
        check_name(key, f"a name in {what}")
        check_magnitude(number, f"a number in {what}")
    return value


def _exactly_bytes(size: int) -> Callable[[object, str], bytes]:
    def check(value: object, what: str) -> bytes:
        if not isinstance(value, bytes) or len(value) != size:
            raise ValueError(f"{what} must be {size} bytes, not {describe(value)}")
        return value

    return check


def _key_hex(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{what} must be 64 lowercase hex digits, not {describe(value)}")
    return value


_count, _round, _seed = _integer(1), _integer(1), _integer(0)
_signature = _exactly_bytes(64)  # Ed25519
MAX_SCHEMA_CHARS = 1 << 22


def _schema(value: object, what: str) -> str:
    """A schema's CSV text: lines of printable text."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SCHEMA_CHARS:
        raise ValueError(f"{what} must be a string of 1..{MAX_SCHEMA_CHARS} characters")
    if not all(line.isprintable() for line in value.split("\n")):
        raise ValueError(f"{what} must be lines of printable text")
    return value


def _positive(value: object, what: str) -> float:
    if type(value) is not float or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive finite float, not {describe(value)}")
    return value


_PRIVACY = {
    "mechanism": check_name,
    "epsilon": _positive,
    "delta": _positive,
    "signature": _signature,
}


def _privacy(value: object, what: str) -> dict:
    """A private client's statement: its mechanism, ε and δ, signed (ledger/signatures.py)."""
    if not isinstance(value, dict) or set(value) != set(_PRIVACY):
        raise ValueError(f"{what} must hold exactly {', '.join(_PRIVACY)}")
    for field, check in _PRIVACY.items():
        check(value[field], f"{what}.{field}")
    return value


# Each check takes the value and how to name it in a refusal ("update message: weights").
SCHEMAS: dict[str, dict[str, Callable[[object, str], object]]] = {
    "challenge": {"challenge": _exactly_bytes(32)},
    "register": {
        "name": check_name,
        "feature_names": _feature_names,
        "n_samples": _count,
        "public_key": _key_hex,
        "login_signature": _signature,
    },
    # HEIGHT: the blocks the server holds; blocks 1..HEIGHT-1 follow, for a client to catch up.
    "welcome": {"genesis": _text, "seed": _seed, "rounds": _count, "height": _count},
    "train": {"round": _round, "weights": _weights, "bias": check_magnitude},
    "update": {
        "round": _round,
        "weights": _weights,
        "bias": check_magnitude,
        "n_samples": _count,
        "metrics": _metrics,
        "seed": _seed,
        "generations": _count,
        "population": _count,
        "signature": _signature,
        "attestation": _signature,  # of the block before this round, as this client verified it
    },
    # Scaffold runs: the round's candidate, and each client's gradient there; an update then
    # also carries the client's gradient at the model it trained from (see OPTIONAL). The probe
    # shows the signed updates the candidate is the FedAvg of (as one line of JSON, written by
    # the ledger's store) and names the clients that left since the round's last probe, so a
    # client can check the point it is asked about and is asked again only after a departure.
    "probe": {
        "round": _round,
        "weights": _weights,
        "bias": check_magnitude,
        "updates": _text,
        "left": _client_names,
    },
    "gradient": {"round": _round, "gradient": _gradient, "signature": _signature},
    "close": {"round": _round},
    "attest": {"round": _round, "attestation": _signature},
    "block": {"block": _text},
    "waiting": {"reason": _text},  # what the server waits for, so a client is never left silent
    "done": {"blocks": _count},
    "refused": {"reason": _text},
}


# Fields a message may carry or not; the server says which its run needs.
OPTIONAL: dict[str, dict[str, Callable[[object, str], object]]] = {
    "update": {"gradient": _gradient},
    # A private run's public bounds (learning/schema.py), and a private client's statement.
    "challenge": {"schema": _schema},
    # The column a client trains to predict, so a run of another target refuses it on joining
    # (older clients do not send it).
    "register": {"privacy": _privacy, "target": check_name},
}


def validate_message(message: object) -> None:
    """Raise ProtocolError unless MESSAGE is a dict of a known type with exactly its fields."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a dict, not {type(message).__name__}")
    kind = message.get("type")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError(f"unknown message type {describe(kind)}")
    fields = set(message) - {"type"}
    if missing := set(schema) - fields:
        raise ProtocolError(f"{kind} message lacks {', '.join(sorted(missing))}")
    optional = {f: c for f, c in OPTIONAL.get(kind, {}).items() if f in fields}
    if extra := fields - set(schema) - set(optional):
        names = ", ".join(sorted(describe(name) for name in extra)[:5])
        raise ProtocolError(f"{kind} message has unknown field(s) {printable(names)}")
    for field, check in (schema | optional).items():
        try:
            check(message[field], f"{kind} message: {field}")
        except (TypeError, ValueError) as error:
            raise ProtocolError(str(error)) from None
