"""Unpickle bytes from a peer without letting them run anything: the restricted unpickler.

A pickle is a small program; loaded carelessly it can call any function (os.system, say). Here
its opcodes are read first, and it may name only the two functions a protocol-5 pickle of a plain
numeric NumPy array needs.
"""

import io
import pickle
import pickletools
from collections.abc import Callable

import numpy as np

from fedchain.checks import describe, printable


class RefusedPickle(ValueError):
    """Bytes that are not a pickle of plain data, with what is wrong."""


def load_restricted(payload: bytes) -> object:
    """Unpickle PAYLOAD, admitting only what messages need; refuse anything else unrun."""
    _check_opcodes(payload)
    try:
        return _unwrap(_RestrictedUnpickler(io.BytesIO(payload)).load())
    except RefusedPickle:
        raise
    except Exception as error:  # a malformed pickle can fail in many ways; all mean "bad frame"
        reason = printable(str(error))
        raise RefusedPickle(f"payload is not a valid message pickle ({reason})") from None


def _check_opcodes(payload: bytes) -> None:
    # Read before anything is built. Besides naming globals (checked in find_class), a small
    # pickle can still cost a lot to build: shared objects (memo reads) can unfold into 2**40
    # parts; tuples nested 300,000 deep overflow the C stack when hashed as a dict key; many
    # big ints or floats with one hash make a dict quadratic. A message needs few of each.
    counts = dict.fromkeys(_OPCODE_LIMITS, 0)
    try:
        for number, (opcode, _, _) in enumerate(pickletools.genops(payload)):
            if number >= MAX_OPCODES:
                raise RefusedPickle(f"payload has over {MAX_OPCODES} pickle opcodes")
            kind = _LIMITED_KIND.get(opcode.name)
            if kind is not None:
                counts[kind] += 1
                if counts[kind] > _OPCODE_LIMITS[kind]:
                    raise RefusedPickle(f"payload has more {kind} than a message needs")
            elif opcode.name not in _ALLOWED_OPCODES:
                raise RefusedPickle(f"payload uses pickle opcode {opcode.name}, not allowed")
    except RefusedPickle:
        raise
    except Exception as error:  # genops rejects a malformed stream in several ways
        reason = printable(str(error))
        raise RefusedPickle(f"payload is not a valid message pickle ({reason})") from None


MAX_OPCODES = 100_000  # a registration naming 10,000 features takes about 20,000
MAX_MEMO_READS = 16
_OPCODE_LIMITS = {"memo reads": MAX_MEMO_READS, "tuples": 16, "big integers": 8, "floats": 64}
_LIMITED_KIND = {
    **dict.fromkeys(["GET", "BINGET", "LONG_BINGET"], "memo reads"),
    **dict.fromkeys(["EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"], "tuples"),
    **dict.fromkeys(["INT", "LONG", "LONG1", "LONG4"], "big integers"),
    **dict.fromkeys(["FLOAT", "BINFLOAT"], "floats"),
}
_ALLOWED_OPCODES = {
    # framing and containers
    "PROTO",
    "FRAME",
    "STOP",
    "MARK",
    "EMPTY_DICT",
    "DICT",
    "SETITEM",
    "SETITEMS",
    "EMPTY_LIST",
    "LIST",
    "APPEND",
    "APPENDS",
    # MEMOIZE numbers entries in order; PUT and its kin name any index, and the unpickler grows
    # its memo to fit: five bytes could ask for gigabytes. Protocol 5 never writes them.
    "MEMOIZE",
    # scalars, text and bytes
    "NONE",
    "NEWTRUE",
    "NEWFALSE",
    "BININT",
    "BININT1",
    "BININT2",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
    "BYTEARRAY8",
    # NumPy arrays: a named global (find_class decides which), called, then given its state
    "GLOBAL",
    "STACK_GLOBAL",
    "REDUCE",
    "BUILD",
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Callable:
        make = _ALLOWED_GLOBALS.get((module, name))
        if make is None:
            where = printable(f"{module}.{name}")
            raise RefusedPickle(f"payload refers to {where}, which is not allowed")
        return _Named(make)  # a fresh stand-in: a BUILD on it cannot touch a real function


class _Named:
    """What a pickle gets for a global it may name: callable, and closed to any state."""

    __slots__ = ("make",)

    def __init__(self, make: Callable) -> None:
        self.make = make

    def __call__(self, *args: object) -> object:
        return self.make(*args)

    def __setstate__(self, state: object) -> None:
        raise RefusedPickle("payload tries to change a function it named")


class _DtypeRequest:
    """Stands in for numpy.dtype while unpickling. The pickle's BUILD hands it the dtype's state
    as data to check, so no state of the peer's choosing ever reaches a real NumPy object."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.byteorder = "="

    def __setstate__(self, state: object) -> None:
        # NumPy writes a plain number type's state as (3, byteorder, None, None, None, -1, -1, 0).
        plain = (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and state[1] in ("<", ">", "|", "=")
            and all(part is None for part in state[2:5])
            and state[5:] == (-1, -1, 0)
        )
        if not plain:
            raise RefusedPickle("payload gives a dtype a state that is not a plain number's")
        self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        base = np.dtype(self.spec)
        return base.newbyteorder(self.byteorder) if self.byteorder in "<>" else base


class _MadeArray:
    """An array made while unpickling. A later BUILD on it is refused instead of being passed
    to ndarray.__setstate__; load_restricted unwraps it once the whole pickle has loaded."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __setstate__(self, state: object) -> None:
        raise RefusedPickle("payload tries to change an array after making it")


def _numeric_dtype(spec: object, align: object = False, copy: object = False) -> _DtypeRequest:
    if not isinstance(spec, str) or spec not in _NUMERIC_DTYPES or not {align, copy} <= {0, 1}:
        raise RefusedPickle(f"payload asks for dtype {describe(spec)}; only plain numbers allowed")
    return _DtypeRequest(spec)


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _MadeArray:
    if not isinstance(dtype, _DtypeRequest) or not isinstance(buffer, bytes | bytearray):
        raise RefusedPickle("payload holds an array that is not plain numbers")
    array = np.frombuffer(buffer, dtype=dtype.dtype()).reshape(shape, order=order).copy()
    return _MadeArray(array)


def _unwrap(value: object) -> object:
    # Messages carry arrays as the values of their top-level dict; nothing deeper is unwrapped,
    # and a wrapper left anywhere else fails the message's schema.
    if isinstance(value, _MadeArray):
        return value.array
    if isinstance(value, dict):
        return {key: v.array if isinstance(v, _MadeArray) else v for key, v in value.items()}
    return value


_NUMERIC_DTYPES = {"f8", "f4", "i8", "i4", "u8", "u4"}  # also what dtype.str ends with

# What pickle protocol 5 writes for a NumPy array: a dtype and a buffer. Nothing else is named.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable] = {
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}
