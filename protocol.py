"""The bytes on the wire: length-prefixed frames carrying pickled messages, read back safely.

A frame is a 9-byte header (magic b"FLBM", a version byte, a 32-bit payload length) and a
protocol-5 pickle of a small dict with a "type". The length prefix is what lets a reader know where
a message ends (the original guessed, with fixed-size reads). The pickle is loaded by an unpickler
that can build only plain builtins and float/int NumPy arrays, so a crafted frame cannot run code.
Every message is checked against its schema before anyone else sees it.
"""

import pickle
import socket
import struct
import time
from collections.abc import Callable

import numpy as np

from safe_unpickle import RefusedPickle, describe, load_restricted, printable

DEFAULT_HOST = "127.0.0.1"  # loopback: nothing outside this machine can reach it by default
DEFAULT_PORT = 10000
MAGIC = b"FLBM"
VERSION = 1
HEADER = struct.Struct(">4sBI")
# A block as JSON takes about 25 bytes a weight: 16 MiB holds 10,000-feature models of 60 clients.
DEFAULT_MAX_FRAME_BYTES = 1 << 24
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


_RECEIVE_BYTES = 1 << 16


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

    def receive(self, sock: socket.socket) -> list[dict] | None:
        """Read what SOCK has ready (call when it is readable); None once the peer has closed."""
        try:
            data = sock.recv(_RECEIVE_BYTES)
        except OSError:  # reset by the peer, say: as good as closed
            return None
        return self.feed(data) if data else None


def decode_payload(payload: bytes) -> dict:
    """Unpickle a frame's payload safely and check it against its message schema."""
    try:
        message = load_restricted(payload)
    except RefusedPickle as error:
        raise ProtocolError(str(error)) from None
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
