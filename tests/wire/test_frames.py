"""Frames and messages over a real socket pair: round trips, and every refusal the protocol
promises, including pickles that would run code if loaded carelessly."""

import builtins
import os
import pickle
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from wire_helpers import Exploit, frame, receive

from fedchain.settings import MAX_FRAME_BYTES
from fedchain.wire.frames import (
    HEADER,
    MAGIC,
    VERSION,
    ConnectionClosed,
    FrameReader,
    decode_payload,
    receive_message,
    send_message,
)
from fedchain.wire.messages import ProtocolError


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def register(**changes) -> dict:
    message = {
        "type": "register",
        "name": "a",
        "feature_names": ["x"],
        "n_samples": 1,
        "public_key": "ab" * 32,
        "login_signature": bytes(64),
    }
    return {**message, **changes}


def update(**changes) -> dict:
    message = {
        "type": "update",
        "round": 1,
        "weights": np.array([0.5, -1.25, 3.0]),
        "bias": 7.0,
        "n_samples": 535,
        "metrics": {"local_mse": 0.19, "train_s": 0.1},
        "seed": 0,
        "generations": 150,
        "population": 40,
        "signature": bytes(64),
        "attestation": bytes(64),
    }
    message.update(changes)
    return message


def test_round_trip_keeps_every_bit(pair):
    a, b = pair
    weights = np.array([0.1, -0.0, 5e-324, 1e100])
    send_message(a, update(weights=weights))
    received = receive(b)
    assert received["weights"].tobytes() == weights.tobytes()
    assert received["weights"].dtype == np.float64
    assert received["bias"] == 7.0 and received["metrics"]["local_mse"] == 0.19


def test_messages_split_across_many_small_writes_arrive_whole(pair):
    a, b = pair
    data = frame(pickle.dumps(update(), protocol=5))

    def trickle() -> None:
        for i in range(len(data)):
            a.sendall(data[i : i + 1])

    writer = threading.Thread(target=trickle)
    writer.start()
    assert receive(b)["n_samples"] == 535
    writer.join()


def test_a_truncated_stream_is_reported_as_a_closed_connection(pair):
    a, b = pair
    data = frame(pickle.dumps(update(), protocol=5))
    a.sendall(data[: len(data) // 2])
    a.close()
    with pytest.raises(ConnectionClosed, match="mid-frame"):
        receive(b)


def test_a_clean_close_between_frames_is_not_an_error_message(pair):
    a, b = pair
    a.close()
    with pytest.raises(ConnectionClosed, match="closed the connection"):
        receive(b)


def test_an_oversized_length_is_refused_before_the_payload_is_read(pair):
    a, b = pair
    # Only the header is sent: if the reader tried to read the payload, it would time out.
    a.sendall(HEADER.pack(MAGIC, VERSION, 2**31))
    with pytest.raises(ProtocolError, match="over the limit"):
        receive_message(b, max_frame_bytes=1 << 20)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HEADER.pack(b"GET ", VERSION, 10), "not a frame of this protocol"),
        (HEADER.pack(MAGIC, 99, 10), "version 99"),
        (frame(b"\x80\x05not a pickle"), "not a valid message pickle"),
        (frame(pickle.dumps(["a", "list"], protocol=5)), "must be a dict"),
    ],
)
def test_bad_frames_are_refused(pair, data, expected):
    a, b = pair
    a.sendall(data)
    with pytest.raises(ProtocolError, match=expected):
        receive(b)


def exploits(target: str) -> list:
    return [
        Exploit(builtins.open, target, "w"),
        Exploit(os.system, f"touch {target}"),
        Exploit(subprocess.Popen, ["touch", target]),
        Exploit(builtins.eval, f"open({target!r}, 'w')"),
        Exploit(builtins.exec, f"open({target!r}, 'w')"),
        Exploit(Path.touch, Path(target)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_a_pickle_that_would_create_a_file_is_refused_and_nothing_runs(pair, tmp_path, index):
    a, b = pair
    target = tmp_path / "pwned"
    exploit = exploits(str(target))[index]
    a.sendall(frame(pickle.dumps({"type": "refused", "reason": exploit}, protocol=5)))
    with pytest.raises(ProtocolError, match="not allowed"):
        receive(b)
    assert not target.exists()


@pytest.mark.parametrize(
    "array",
    [
        np.array([1.0, "x"], dtype=object),
        np.zeros(2, dtype=[("a", "f8")]),
        np.array(["a", "b"]),
    ],
)
def test_arrays_of_anything_but_plain_numbers_are_refused(array):
    with pytest.raises(ProtocolError):
        decode_payload(pickle.dumps(update(weights=array), protocol=5))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "hello"}, "unknown message type 'hello'"),
        ({"kind": "update"}, "unknown message type None"),
        ({k: v for k, v in update().items() if k != "bias"}, "update message lacks bias"),
        (update(extra=1), "unknown field"),
        (update(weights=np.zeros((2, 3))), "weights must be a vector"),
        (update(weights=np.zeros(0)), "weights must be a vector"),
        (update(weights=np.array([1.0, np.nan])), "weights holds NaN or infinity"),
        (update(weights=np.array([1.0, np.inf])), "weights holds NaN or infinity"),
        (update(weights=[1.0, 2.0]), "weights must be a NumPy float64 array"),
        (update(weights=np.array([1, 2])), "weights must be a NumPy float64 array"),
        (update(bias=float("nan")), "bias must be finite"),
        (update(bias="7"), "bias must be a number"),
        (update(bias=10**400), "bias must be finite and at most 1e+100"),
        (update(weights=np.array([1.0, -1e101])), "weights holds a number larger than 1e+100"),
        ({"type": "refused", "reason": "two\nlines"}, "reason must be printable text"),
        (update(n_samples=0), "n_samples must be a positive integer"),
        (update(n_samples=-5), "n_samples must be a positive integer"),
        (update(n_samples=True), "n_samples must be a positive integer"),
        (update(round=0), "round must be a positive integer"),
        (update(metrics={"x": float("nan")}), "metrics"),
        (register(name=""), "register message: name must be 1..64 characters"),
        (register(feature_names=["x", "x"]), "feature_names has a repeated name, 'x'"),
        (register(public_key="AB" * 32), "public_key must be 64 lowercase hex digits"),
        (register(login_signature=bytes(63)), "login_signature must be 64 bytes"),
        (update(signature=b"x" * 65), "update message: signature must be 64 bytes"),
        (update(attestation="ab" * 64), "attestation must be 64 bytes"),
        ({"type": "challenge", "challenge": bytes(31)}, "challenge must be 32 bytes"),
    ],
)
def test_malformed_messages_are_refused_naming_the_fault(pair, message, expected):
    a, b = pair
    a.sendall(frame(pickle.dumps(message, protocol=5)))
    with pytest.raises(ProtocolError) as caught:
        receive(b)
    assert expected in str(caught.value)


def test_the_sender_refuses_to_send_a_malformed_message(pair):
    a, _ = pair
    with pytest.raises(ProtocolError, match="NaN"):
        send_message(a, update(weights=np.array([np.nan, 1.0, 2.0])))


def test_header_layout_is_fixed():
    assert HEADER.size == 9
    assert struct.unpack(">4sBI", frame(b"x")[:9]) == (MAGIC, VERSION, 1)


def test_the_frame_reader_assembles_frames_from_any_pieces():
    frames = b"".join(frame(pickle.dumps(update(round=r), protocol=5)) for r in (1, 2))
    reader = FrameReader(MAX_FRAME_BYTES)
    got = []
    for i in range(0, len(frames), 7):
        got += reader.feed(frames[i : i + 7])
    assert [m["round"] for m in got] == [1, 2]
    assert len(FrameReader(MAX_FRAME_BYTES).feed(frames)) == 2


def test_the_frame_reader_refuses_an_oversized_frame_from_its_header_alone():
    reader = FrameReader(max_frame_bytes=1024)
    with pytest.raises(ProtocolError, match="over the limit of 1024"):
        reader.feed(HEADER.pack(MAGIC, VERSION, 1025))


def test_the_frame_reader_reads_what_a_socket_has_and_sees_it_close(pair):
    a, b = pair
    b.setblocking(False)  # as the server's sockets are: a read takes only what has arrived
    reader = FrameReader(MAX_FRAME_BYTES)
    data = frame(pickle.dumps(update(), protocol=5))
    a.sendall(data[:5])
    assert reader.receive(b) == []
    a.sendall(data[5:])
    assert [m["type"] for m in reader.receive(b)] == ["update"]
    a.close()
    assert reader.receive(b) is None


def test_a_reader_takes_everything_that_has_arrived_in_one_call(pair):
    # A server deciding at a deadline must see a large update that is already in the buffer.
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    big = update(weights=np.arange(9000, dtype=np.float64))
    send_message(a, big)
    send_message(a, big)
    b.setblocking(False)
    reader = FrameReader(MAX_FRAME_BYTES)
    time.sleep(0.2)  # both frames are in b's buffer: over 140 KB, more than one recv's worth
    messages = reader.receive(b)
    assert len(messages) == 2 and np.array_equal(messages[1]["weights"], big["weights"])
    assert reader.receive(b) == []  # nothing more yet, and no blocking
    a.close()
    assert reader.receive(b) is None
