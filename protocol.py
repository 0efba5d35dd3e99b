"""The bytes on the wire: length-prefixed frames carrying pickled messages, read back safely.

A frame is a 9-byte header (magic b"FLBM", a version byte, a 32-bit payload length) and a
protocol-5 pickle of a small dict with a "type". The length prefix is what lets a reader know where
a message ends (the original guessed, with fixed-size reads). The pickle is loaded by an unpickler
that can build only plain builtins and float/int NumPy arrays, so a crafted frame cannot run code.
Every message is checked against its schema before anyone else sees it.
"""

import io
import pickle
import pickletools
import socket
import struct
import time
from collections.abc import Callable

import numpy as np

DEFAULT_HOST = "127.0.0.1"  # loopback: nothing outside this machine can reach it by default
DEFAULT_PORT = 10000
MAGIC = b"FLBM"
VERSION = 1
HEADER = struct.Struct(">4sBI")
DEFAULT_MAX_FRAME_BYTES = 1 << 20  # a block of 2 clients' 10,000-feature models, as JSON, fits
MAX_NAME_CHARS = 64  # client and feature names; dataset.py holds columns to the same
MAX_FEATURES = 10_000
MAX_TEXT_CHARS = 1 << 26  # a block as JSON, or a reason; in practice the frame limit binds first
MAX_MAGNITUDE = 1e100  # weights and biases beyond this are refused: their squares must stay finite


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol, with what was wrong."""


class ConnectionClosed(ConnectionError):
    """The peer closed the connection, cleanly between frames or in the middle of one."""


def send_message(sock: socket.socket, message: dict) -> None:
    """Check MESSAGE against its schema, then send it as one frame."""
    validate_message(message)
    payload = pickle.dumps(message, protocol=5)
    sock.sendall(HEADER.pack(MAGIC, VERSION, len(payload)) + payload)


def receive_message(sock: socket.socket, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict:
    """Read one frame from SOCK and return its checked message.

    The socket's timeout bounds the whole message, not each piece of it, so a peer that sends a
    byte now and then cannot hold the reader past it.
    """
    timeout_s = sock.gettimeout()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        header = _receive_exactly(sock, HEADER.size, deadline, at_start=True)
        length = _payload_length(header, max_frame_bytes)
        return decode_payload(_receive_exactly(sock, length, deadline, at_start=False))
    finally:
        sock.settimeout(timeout_s)


class FrameReader:
    """Collects the bytes a peer sends and returns its messages as each frame completes.

    For a server that must never wait on one peer: it reads whatever has arrived and feeds it
    here, so a peer that sends half a frame and stops holds up nobody.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        """Add DATA; return every message now complete. ProtocolError on a bad frame."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            # The header is judged as soon as it is here: an oversized frame is refused before
            # its payload is waited for or stored.
            length = _payload_length(bytes(self._buffer[: HEADER.size]), self.max_frame_bytes)
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            messages.append(decode_payload(payload))
        return messages

    @property
    def mid_frame(self) -> bool:
        return bool(self._buffer)


def decode_payload(payload: bytes) -> dict:
    """Unpickle a frame's payload safely and check it against its message schema."""
    message = load_payload(payload)
    validate_message(message)
    return message


def _payload_length(header: bytes, max_frame_bytes: int) -> int:
    magic, version, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"not a frame of this protocol (magic {magic!r})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this is {VERSION})")
    if length > max_frame_bytes:
        # Refused before reading, so a hostile length cannot make us allocate or wait for it.
        raise ProtocolError(f"frame of {length} bytes is over the limit of {max_frame_bytes}")
    return length


def load_payload(payload: bytes) -> object:
    """Unpickle PAYLOAD, admitting only what messages need; refuse anything else unrun."""
    _check_opcodes(payload)
    try:
        return _RestrictedUnpickler(io.BytesIO(payload)).load()
    except ProtocolError:
        raise
    except Exception as error:  # a malformed pickle can fail in many ways; all mean "bad frame"
        reason = printable(str(error))
        raise ProtocolError(f"payload is not a valid message pickle ({reason})") from None


def describe(value: object) -> str:
    """A short, safe description of a value a peer sent, for an error message."""
    # Never repr() what a peer built: it may be huge, deeply nested, or slow to print.
    if isinstance(value, str):
        return printable(repr(value[:40]) + ("…" if len(value) > 40 else ""))
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    return f"a {type(value).__name__}"


def printable(text: str, limit: int = 300) -> str:
    """TEXT made safe to print and send on: control characters escaped, length capped."""
    # Peers choose what goes into error messages; none of it may move a terminal's cursor.
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("…" if len(text) > limit else "")


def _check_opcodes(payload: bytes) -> None:
    # Read before anything is built. Besides naming globals (checked in find_class), a pickle
    # can share one object many times through its memo, so 200 bytes can unfold into a
    # structure of 2**40 parts; a message shares at most a few, so memo reads are capped.
    memo_reads = 0
    try:
        for opcode, _, _ in pickletools.genops(payload):
            if opcode.name in _MEMO_READS:
                memo_reads += 1
                if memo_reads > MAX_MEMO_READS:
                    raise ProtocolError("payload shares objects more than a message needs")
            elif opcode.name not in _ALLOWED_OPCODES:
                raise ProtocolError(f"payload uses pickle opcode {opcode.name}, not allowed")
    except ProtocolError:
        raise
    except Exception as error:  # genops rejects a malformed stream in several ways
        reason = printable(str(error))
        raise ProtocolError(f"payload is not a valid message pickle ({reason})") from None


MAX_MEMO_READS = 16
_MEMO_READS = {"GET", "BINGET", "LONG_BINGET"}
_ALLOWED_OPCODES = {
    # framing and containers
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "EMPTY_DICT", "DICT", "SETITEM",
    "SETITEMS", "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_TUPLE", "TUPLE", "TUPLE1",
    "TUPLE2", "TUPLE3", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT",
    # scalars, text and bytes
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES",
    "BINBYTES8", "BYTEARRAY8",
    # NumPy arrays: a named global (find_class decides which), called, then given its state
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
}  # fmt: skip


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Callable:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            where = printable(f"{module}.{name}")
            raise ProtocolError(f"payload refers to {where}, which is not allowed")
        return allowed

    def persistent_load(self, pid: object) -> object:
        raise ProtocolError("payload uses persistent ids, which are not allowed")


def _numeric_dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    if not isinstance(spec, str) or spec not in _NUMERIC_DTYPES or not {align, copy} <= {0, 1}:
        raise ProtocolError(f"payload asks for dtype {describe(spec)}; only plain numbers allowed")
    # copy=True, as pickle asks, matters: the state applied next must not touch NumPy's own.
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _frombuffer(buffer: bytes, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    # The pickle may have applied state of its choosing to the dtype; rebuild a clean one.
    if not isinstance(dtype, np.dtype) or dtype.names is not None or dtype.subdtype is not None:
        raise ProtocolError("payload holds an array that is not plain numbers")
    clean = np.dtype(dtype.str)
    if clean.str[1:] not in _NUMERIC_DTYPES:
        raise ProtocolError(f"payload holds an array of {printable(clean.str)}, not plain numbers")
    return np.frombuffer(buffer, dtype=clean).reshape(shape, order=order).copy()


_NUMERIC_DTYPES = {"f8", "f4", "i8", "i4", "u8", "u4"}  # also what dtype.str ends with

# What pickle protocol 5 writes for a NumPy array: a dtype and a buffer. Nothing else is named.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable] = {
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


def _receive_exactly(
    sock: socket.socket, size: int, deadline: float | None, *, at_start: bool
) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            if at_start and received == 0:
                raise ConnectionClosed("the peer closed the connection")
            raise ConnectionClosed(f"the connection closed mid-frame ({received} of {size} bytes)")
        received += count
    return bytes(buffer)


# --- messages ---------------------------------------------------------------------------------


def _name(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise ProtocolError(f"must be a string of 1..{MAX_NAME_CHARS} characters")
    if not value.isprintable() or value != value.strip():
        raise ProtocolError("must be printable, with no leading or trailing spaces")
    return value


def _names(value: object) -> list:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_FEATURES:
        raise ProtocolError(f"must be a list of 1..{MAX_FEATURES} names")
    for item in value:
        _name(item)
    if len(set(value)) != len(value):
        raise ProtocolError("has a repeated name")
    return value


def _integer(low: int, high: int, what: str) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ProtocolError(f"must be {what}, not {describe(value)}")
        return value

    return check


_count = _integer(1, 2**63 - 1, "a positive integer")
_round = _integer(1, 2**63 - 1, "a round number (a positive integer)")
_seed = _integer(0, 2**63 - 1, "a non-negative integer")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"must be a number, not {type(value).__name__}")
    # Comparing, not converting: an int too large for a float is refused, not an OverflowError.
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
        raise ProtocolError(f"must be finite and at most {MAX_MAGNITUDE:g} in size")
    return value


def _weights(value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.float64:
        raise ProtocolError("must be a NumPy float64 array")
    if value.ndim != 1 or not 0 < value.size <= MAX_FEATURES:
        raise ProtocolError(f"must be a vector of 1..{MAX_FEATURES} numbers, not {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ProtocolError("holds NaN or infinity")
    if np.max(np.abs(value)) > MAX_MAGNITUDE:
        raise ProtocolError(f"holds a number larger than {MAX_MAGNITUDE:g}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ProtocolError(f"must be a string of at most {MAX_TEXT_CHARS} characters")
    if not value.isprintable():
        raise ProtocolError("must be printable text on one line")
    return value


def _metrics(value: object) -> dict:
    if not isinstance(value, dict) or len(value) > 16:
        raise ProtocolError("must be a dict of at most 16 named numbers")
    for key, number in value.items():
        _name(key)
        _number(number)
    return value


# Client -> server: register, update. Server -> client: welcome, train, block, done, refused.
SCHEMAS: dict[str, dict[str, Callable]] = {
    "register": {"name": _name, "feature_names": _names, "n_samples": _count},
    "welcome": {"genesis": _text, "seed": _seed, "rounds": _count},
    "train": {"round": _round, "weights": _weights, "bias": _number},
    "update": {
        "round": _round,
        "weights": _weights,
        "bias": _number,
        "n_samples": _count,
        "metrics": _metrics,
    },
    "block": {"block": _text},
    "done": {"blocks": _count},
    "refused": {"reason": _text},
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
    if extra := fields - set(schema):
        names = ", ".join(sorted(describe(name) for name in extra)[:5])
        raise ProtocolError(f"{kind} message has unknown field(s) {printable(names)}")
    for field, check in schema.items():
        try:
            check(message[field])
        except ProtocolError as error:
            raise ProtocolError(f"{kind} message: {field} {error}") from None
