"""Hand-made frames and hostile pickles, for the tests that play a bad peer."""

import socket

from fedchain.settings import MAX_FRAME_BYTES
from fedchain.wire.frames import HEADER, MAGIC, VERSION, receive_message


def frame(payload: bytes, *, magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    """PAYLOAD behind a frame header, as send_message would write it (or with a bad header)."""
    return HEADER.pack(magic, version, len(payload)) + payload


def receive(sock: socket.socket) -> dict:
    """One message from SOCK, under the programs' default frame limit."""
    return receive_message(sock, max_frame_bytes=MAX_FRAME_BYTES)


class Exploit:
    """Pickles as a call to FUNCTION(*ARGS): what an attacker would put in a frame."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args
