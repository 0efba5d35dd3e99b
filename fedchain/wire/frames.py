"""The bytes on the wire: length-prefixed frames carrying pickled messages, read back safely.

A frame is a 9-byte header (magic b"FLBM", a version byte, a 32-bit payload length) and a
protocol-5 pickle of a small dict with a "type". The length prefix is what lets a reader know where
a message ends (the original guessed, with fixed-size reads). The pickle is loaded by an unpickler
that can build only plain builtins and float/int NumPy arrays, so a crafted frame cannot run code,
and every message is checked against its schema (messages.py) before anyone else sees it. This is
the only module that reads or writes a socket's bytes.
"""

import pickle
import socket
import ssl
import struct
import time

from fedchain.wire.messages import ProtocolError, validate_message
from fedchain.wire.safe_unpickle import RefusedPickle, load_restricted

MAGIC = b"FLBM"
VERSION = 1
HEADER = struct.Struct(">4sBI")
MAX_FRAME_LIMIT = 2**32 - 1  # the widest length the header's 32-bit field can carry


class ConnectionClosed(ConnectionError):
    """The peer closed the connection, cleanly between frames or in the middle of one."""


def send_message(sock: socket.socket, message: dict | bytes) -> None:
    """Check MESSAGE against its schema, then send it as one frame (or send a frame that
    encode_message made, for a message that goes to many peers)."""
    sock.sendall(message if isinstance(message, bytes) else encode_message(message))


def encode_message(message: dict) -> bytes:
    """MESSAGE, checked against its schema, as one frame."""
    validate_message(message)
    payload = pickle.dumps(message, protocol=5)
    return HEADER.pack(MAGIC, VERSION, len(payload)) + payload


def receive_message(sock: socket.socket, *, max_frame_bytes: int) -> dict:
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

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes  # may be lowered once the run's size is known
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame not yet whole."""
        return len(self._buffer)

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
        """Read all SOCK has ready (a non-blocking socket, once it is readable); return the
        messages now complete, or None once the peer has closed."""
        messages: list[dict] = []
        # To the end of what has arrived, since a decision may hang on all of it; but no more
        # than a whole frame at a time, so a peer that never stops sending holds up nobody.
        budget = self.max_frame_bytes + HEADER.size
        while budget > 0 or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            # (Past the budget, TLS may still hold decrypted bytes that the socket's readiness
            # no longer shows: they are taken too, or they would wait for the next arrival.)
            try:
                data = sock.recv(_RECEIVE_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return messages  # nothing more yet (for TLS: a record not yet whole)
            except OSError:  # reset by the peer, say: as good as closed
                return messages or None
            if not data:
                return messages or None  # the close is seen again on the next read
            budget -= len(data)
            messages += self.feed(data)
        return messages


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
