"""The protocol's messages in Flower's records: each message a frame as the socket carries it
(wire/frames.py), so the receiving side checks it exactly as it would off a socket (the
restricted unpickler, the message's schema), and Flower never sees more than bytes."""

from collections.abc import Sequence

from flwr.app import ConfigRecord, RecordDict

from fedchain.wire.frames import HEADER, FrameReader, encode_message
from fedchain.wire.messages import ProtocolError

RECORD = "fedchain"


def pack(messages: Sequence[dict], *, server_key: str = "", failure: str = "") -> RecordDict:
    """MESSAGES, in order, as a Flower message's content. The server's side names its key (a
    node pins it at the first message); a client's side says why it failed, if it did."""
    frames = b"".join(encode_message(message) for message in messages)
    record = ConfigRecord({"frames": frames, "server_key": server_key, "failure": failure})
    return RecordDict({RECORD: record})


def unpack(
    content: RecordDict, max_frame_bytes: int, max_frames: int | None = None
) -> tuple[list[dict], str, str]:
    """The messages, the server's key and the failure CONTENT holds, checked as the socket
    checks them; no more than MAX_FRAMES frames' worth of bytes, if given, is read at all.
    Raises ProtocolError naming what is wrong."""
    record = content.config_records.get(RECORD)
    if record is None:
        raise ProtocolError(f"a Flower message without the {RECORD!r} record")
    fields = {}
    for name, kind in (("frames", bytes), ("server_key", str), ("failure", str)):
        value = record.get(name)
        if type(value) is not kind:
            raise ProtocolError(f"the {RECORD!r} record's {name!r} is not {kind.__name__}")
        fields[name] = value
    budget = None if max_frames is None else max_frames * (max_frame_bytes + HEADER.size)
    if budget is not None and len(fields["frames"]) > budget:
        raise ProtocolError(
            f"{len(fields['frames'])} bytes of frames, more than {max_frames} frame(s) of at "
            f"most {max_frame_bytes} bytes"
        )
    reader = FrameReader(max_frame_bytes)
    messages = reader.feed(fields["frames"])
    if reader.buffered_bytes:
        raise ProtocolError(f"{reader.buffered_bytes} bytes after the last whole frame")
    return messages, fields["server_key"], fields["failure"]
