"""A block of the chain, its canonical bytes and its hash.

This is the only place that knows the byte layout the hash is computed over. Every field is in it,
the server's model included: the original application hashed the clients' models but not the
server's, so the global model could be replaced without the chain noticing.
"""

import hashlib
import math
import struct
from dataclasses import dataclass

from fedchain.checks import MAX_U64, check_int, check_name, check_names
from fedchain.learning.linear_model import LinearModel

FORMAT_VERSION = 1  # hashed, so a later layout can add fields while old chains still verify
AGGREGATION_FEDAVG = "fedavg"
KNOWN_AGGREGATIONS = (AGGREGATION_FEDAVG,)
ZERO_HASH = "0" * 64
MAX_DIFFICULTY_BITS = 64  # far beyond what anyone mines on a CPU; keeps the target in range
_MAGIC = b"FLBC"
_NONCE = struct.Struct(">Q")
_U16, _U32, _U64, _F64 = (struct.Struct(f) for f in (">H", ">I", ">Q", ">d"))
_U16_MAX = 2**16 - 1
_HEX_DIGITS = "0123456789abcdef"


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution to a round: its trained model and how many rows it trained on."""

    model: LinearModel
    n_samples: int

    def __post_init__(self) -> None:
        if not isinstance(self.model, LinearModel):
            raise TypeError("a client update's model must be a LinearModel")
        check_int(self.n_samples, 1, MAX_U64, "n_samples")


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

    def __post_init__(self) -> None:
        # Refuse a malformed block at construction, so nothing downstream can hash one.
        check_int(self.version, 0, _U16_MAX, "version")
        check_int(self.index, 0, MAX_U64, "index")
        if not isinstance(self.timestamp, float) or not math.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be a finite float, not {self.timestamp!r}")
        _check_hex("previous_hash", self.previous_hash)
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
            _check_hex("hash", self.hash)

    def updates_in_order(self) -> list[tuple[LinearModel, int]]:
        """The client models with their sample counts, in `cli` order."""
        return [(self.client_model[c].model, self.client_model[c].n_samples) for c in self.cli]

    def sample_counts(self) -> dict[str, int]:
        """Each contributing client's row count."""
        return {name: self.client_model[name].n_samples for name in self.cli}


def body_digest(block: Block) -> bytes:
    """SHA-256 of every field but the nonce and the hash, in a fixed binary encoding."""
    # Binary, not JSON text: float64 bits are exact (no '1' versus '1.0', no lost digits),
    # every string and vector carries its length so no two blocks share an encoding, and
    # clients are written in `cli` order, which is itself hashed.
    parts = [
        _MAGIC,
        _U16.pack(block.version),
        _U64.pack(block.index),
        _F64.pack(block.timestamp),
        bytes.fromhex(block.previous_hash),
        _U16.pack(block.difficulty),
        _pack_strings(block.feature_names),
        _pack_string(block.aggregation),
        _pack_strings(block.cli),
    ]
    for name in block.cli:
        update = block.client_model[name]
        parts += [_U64.pack(update.n_samples), _pack_model(update.model)]
    parts.append(_pack_model(block.server_model))
    return hashlib.sha256(b"".join(parts)).digest()


def compute_hash(block: Block) -> str:
    """The block's hash: SHA-256 over the body's digest and the nonce."""
    return hashlib.sha256(body_digest(block) + _NONCE.pack(block.nonce)).hexdigest()


def _check_hex(name: str, value: object) -> None:
    if not isinstance(value, str) or len(value) != 64 or value.strip(_HEX_DIGITS):
        raise ValueError(f"{name} must be 64 lowercase hex digits, not {value!r}")


def _check_tuple(name: str, values: object) -> None:
    # A block is immutable; a list here could change under its hash.
    if not isinstance(values, tuple):
        raise TypeError(f"{name} must be a tuple of strings")


def _pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U32.pack(len(raw)) + raw


def _pack_strings(texts: tuple[str, ...]) -> bytes:
    return _U32.pack(len(texts)) + b"".join(_pack_string(t) for t in texts)


def _pack_model(model: LinearModel) -> bytes:
    # LinearModel has already refused NaN and infinities, so every float here is finite.
    weights = model.weights.astype(">f8").tobytes()
    return _U32.pack(model.n_features) + weights + _F64.pack(model.bias)
