"""A real client against a fake server that lies: every block and model it sends is checked, and
the client stops with a clear reason instead of trusting it."""

import contextlib
import pickle
import socket
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from processes import ROOT
from wire_helpers import Exploit, frame, receive

from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import ClientUpdate
from fedchain.ledger.chain import make_genesis, make_round_block
from fedchain.ledger.mining import seal
from fedchain.ledger.store import block_to_json
from fedchain.wire.frames import HEADER, MAGIC, VERSION, ConnectionClosed, send_message

PWN = "open('pwned-by-fake-server', 'w')"
FEATURES = load_dataset(ROOT / "data" / "client1.csv").feature_names
GENESIS = make_genesis(
    initial_model=LinearModel.zeros(len(FEATURES)), feature_names=FEATURES, difficulty=4
)


class FakeServer:
    """Serves one client with SCRIPT(conn) after reading its registration, on a free port.

    The script runs in a thread, where a failed assertion would go unseen: finish() re-raises
    it in the test."""

    def __init__(self, script) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            with (
                self.listener,
                contextlib.suppress(ConnectionClosed, ConnectionResetError, BrokenPipeError),
            ):
                conn, _ = self.listener.accept()
                with conn:  # the client hangs up as soon as it refuses: that ends the script
                    conn.settimeout(30)
                    assert receive(conn)["type"] == "register"
                    self.script(conn)
                    with contextlib.suppress(TimeoutError):
                        conn.recv(1)  # wait for the client to close
        except BaseException as error:  # handed to the test's thread by finish()
            self.failure = error

    def finish(self) -> None:
        """Wait for the script to end; raise whatever failed in it."""
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the fake server's script did not end"
        if self.failure is not None:
            raise self.failure


def welcome(conn, genesis=GENESIS) -> None:
    send_message(
        conn, {"type": "welcome", "genesis": block_to_json(genesis), "seed": 0, "rounds": 1}
    )


def train(conn, index: int = 1, model: LinearModel = GENESIS.server_model) -> dict:
    message = {"type": "train", "round": index, "weights": model.weights.copy()}
    send_message(conn, {**message, "bias": model.bias})
    return receive(conn)


def send_block(conn, block) -> None:
    send_message(conn, {"type": "block", "block": block_to_json(block)})


def sent_update(update: dict) -> ClientUpdate:
    return ClientUpdate(LinearModel(update["weights"], update["bias"]), update["n_samples"])


def forged_average(conn) -> None:
    welcome(conn)
    honest = make_round_block(GENESIS, {"cli1": sent_update(train(conn))})
    forged = LinearModel(honest.server_model.weights * 1.5, honest.server_model.bias)
    send_message(
        conn, {"type": "block", "block": block_to_json(seal(replace(honest, server_model=forged)))}
    )


def altered_update(conn) -> None:
    welcome(conn)
    update = sent_update(train(conn))
    nudged = LinearModel(np.nextafter(update.model.weights, np.inf), update.model.bias)
    send_block(conn, make_round_block(GENESIS, {"cli1": ClientUpdate(nudged, update.n_samples)}))


def broken_link(conn) -> None:
    welcome(conn)
    block = make_round_block(GENESIS, {"cli1": sent_update(train(conn))})
    send_message(
        conn,
        {"type": "block", "block": block_to_json(seal(replace(block, previous_hash="1" * 64)))},
    )


SCRIPTS = {
    "wrong global model": (
        lambda c: (welcome(c), train(c, model=LinearModel(np.ones(len(FEATURES)), 0.0))),
        "the global model for round 1 is not the one on the chain",
    ),
    "round out of turn": (lambda c: (welcome(c), train(c, index=2)), "round 2 out of turn"),
    "forged average": (forged_average, "server_model is not the FedAvg"),
    "update altered": (altered_update, "does not hold our update as we sent it"),
    "broken link": (broken_link, "previous_hash does not match"),
    "malformed genesis": (
        lambda c: send_message(c, {"type": "welcome", "genesis": "{}", "seed": 0, "rounds": 1}),
        "malformed block",
    ),
    "other features": (
        lambda c: welcome(
            c,
            make_genesis(
                initial_model=LinearModel.zeros(2), feature_names=("a", "b"), difficulty=4
            ),
        ),
        "the run's features do not fit this client's rows",
    ),
    "early done": (
        lambda c: (welcome(c), send_message(c, {"type": "done", "blocks": 1})),
        "ended the run after 0 of 1 rounds",
    ),
    "oversized frame": (lambda c: c.sendall(HEADER.pack(MAGIC, VERSION, 2**31)), "over the limit"),
    "hostile pickle": (
        lambda c: c.sendall(frame(pickle.dumps({"type": "refused", "reason": Exploit(exec, PWN)}))),
        "not allowed",
    ),
    "refusal": (
        lambda c: send_message(c, {"type": "refused", "reason": "no room"}),
        "the server refused: no room",
    ),
}


@pytest.mark.parametrize("lie", sorted(SCRIPTS))
def test_the_client_refuses_a_lying_server(programs, tmp_path, lie):
    script, expected = SCRIPTS[lie]
    server = FakeServer(script)
    client = programs("client1.py", "--port", server.port, "--replica", tmp_path / "cli1.jsonl")
    assert client.finish() == 1, client.output
    assert expected in client.output
    assert "Traceback" not in client.output
    assert not (tmp_path / "pwned-by-fake-server").exists()
    server.finish()


def test_a_server_that_trickles_a_message_cannot_hold_the_client_past_its_timeout(
    programs, tmp_path
):
    def trickle(conn) -> None:
        welcome(conn)
        for byte in HEADER.pack(MAGIC, VERSION, 100) + bytes(100):
            conn.sendall(bytes([byte]))
            time.sleep(0.5)

    server = FakeServer(trickle)
    client = programs(
        "client1.py", "--port", server.port, "--replica", tmp_path / "cli1.jsonl",
        "--timeout-s", "3",
    )  # fmt: skip
    assert client.finish(timeout_s=20) == 1
    assert "no word from the server within 3 s (--timeout-s)" in client.output
    server.finish()
