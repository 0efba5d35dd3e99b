"""The fixed binary encoding that hashes and signatures are computed over: integers of fixed width,
exact float64 bits, and length-prefixed strings and vectors, so no two values share an encoding."""

import struct

from fedchain.learning.linear_model import LinearModel

U8, U16, U32, U64, F64 = (struct.Struct(f) for f in (">B", ">H", ">I", ">Q", ">d"))


def pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return U32.pack(len(raw)) + raw


def pack_strings(texts: tuple[str, ...]) -> bytes:
    return U32.pack(len(texts)) + b"".join(pack_string(t) for t in texts)


def pack_model(model: LinearModel) -> bytes:
    # LinearModel has already refused NaN and infinities, so every float here is finite.
    weights = model.weights.astype(">f8").tobytes()
    return U32.pack(model.n_features) + weights + F64.pack(model.bias)


def pack_floats(values: tuple[float, ...]) -> bytes:
    return U32.pack(len(values)) + b"".join(F64.pack(v) for v in values)


def pack_hex(text: str) -> bytes:
    """A hex field (a hash, a key, a signature) as its raw bytes, behind its length."""
    raw = bytes.fromhex(text)
    return U32.pack(len(raw)) + raw
