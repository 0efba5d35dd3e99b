"""A running server fed a thousand generated hostile inputs while it admits its clients: it never
crashes or runs what it is sent, refuses each peer with a reason, keeps its memory bounded, and
then runs an honest federation to a valid chain."""

import os
import pickle
import ssl
from pathlib import Path

import numpy as np
from hostile_values import values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import run_blockchain_cli, start_server
from raw_peers import FEATURES, RawClient, connect
from wire_helpers import Exploit, frame, receive

from fedchain.wire.frames import HEADER, MAGIC, VERSION

EXAMPLES = 1000
MAX_RSS_GROWTH_KB = 64 * 1024  # a few connections' worth of buffers, not the inputs' sum
MARKER = "fuzz-ran-code"

message_types = st.sampled_from(
    ["register", "update", "attest", "challenge", "welcome", "block", "done", "hello", ""]
)
field_names = st.sampled_from(
    [
        "name",
        "feature_names",
        "n_samples",
        "public_key",
        "login_signature",
        "round",
        "weights",
        "bias",
        "metrics",
        "seed",
        "generations",
        "population",
        "signature",
        "attestation",
        "x",
    ]
)
messages = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    message_types,
    st.dictionaries(field_names, values, max_size=8),
)
near_registrations = st.builds(  # a registration with one field gone wrong
    lambda field, value: {
        "type": "register",
        "name": "fuzz",
        "feature_names": list(FEATURES),
        "n_samples": 5,
        "public_key": "ab" * 32,
        "login_signature": bytes(64),
        field: value,
    },
    field_names,
    values,
)


def pickled(message: dict) -> bytes:
    return frame(pickle.dumps(message, protocol=5))


inputs = st.one_of(
    st.binary(max_size=3000),
    st.builds(
        lambda m, v, n, tail: HEADER.pack(m, v, n) + tail,
        st.binary(min_size=4, max_size=4) | st.just(MAGIC),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=200),
    ),
    st.builds(lambda n: HEADER.pack(MAGIC, VERSION, n), st.integers(2**20, 2**32 - 1)),
    messages.map(pickled),
    near_registrations.map(pickled),
    st.sampled_from(
        [
            pickled({"type": "register", "name": Exploit(os.system, f"touch {MARKER}")}),
            pickled({"type": "hello", "x": Exploit(exec, f"open('{MARKER}', 'w')")}),
            pickled({"type": "register", "name": np.array([1.0, "x"], dtype=object)}),
        ]
    ),
    st.builds(lambda data, cut: pickled(data)[:cut], messages, st.integers(0, 40)),
)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_server_fed_generated_hostile_input_serves_the_honest_run(programs, tmp_path):
    server, port = start_server(
        programs, tmp_path, "--rounds", "2", "--join-timeout-s", "600", "--register-timeout-s", "5"
    )
    server.wait_for("open enrolment")
    before_kb = rss_kb(server.process.pid)
    welcomed = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=inputs)
    def feed(data: bytes) -> None:
        with RawClient(port, "fuzz") as peer:
            peer.sock.sendall(data)
            # A partial frame gets no answer (the server waits for the rest); a refusal comes back
            # over loopback in well under 10 ms, and waiting longer only made the test slow.
            peer.sock.settimeout(0.01)
            try:
                reply = receive(peer.sock)
            except (TimeoutError, ssl.SSLError, OSError, ConnectionError):
                return
            if reply.get("type") == "welcome":
                welcomed.append(data)

    feed()
    # Plain TCP that never speaks TLS, a handful more.
    for _ in range(5):
        with connect(port) as plain:
            plain.sendall(os.urandom(64))
    assert not welcomed
    assert server.process.poll() is None, server.output  # still serving
    grown_kb = rss_kb(server.process.pid) - before_kb
    assert grown_kb < MAX_RSS_GROWTH_KB, f"the server grew by {grown_kb} KB"
    clients = [
        programs(f"client{i}.py", "--port", port, "--replica", tmp_path / f"cli{i}.jsonl")
        for i in (1, 2)
    ]
    for program in [server, *clients]:
        assert program.finish(timeout_s=120) == 0, program.output[-3000:]
    assert "Traceback" not in server.output
    assert server.output.count("refused 127.0.0.1") + server.output.count("dropped 127.0.0.1") >= (
        EXAMPLES // 2
    )  # every bad peer is named with a reason (a few only time out, refused all the same)
    assert not (tmp_path / MARKER).exists()
    result = run_blockchain_cli("verify", tmp_path / "chain.jsonl")
    assert result.returncode == 0, result.stdout
