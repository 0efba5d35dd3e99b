"""A fake server for the tests that play a lying, broken or recording server to a real client:
it serves each connection with a script (a function of the client's session past its login),
in a thread, and hands whatever failed in the script to the test at finish()."""

import contextlib
import socket
import ssl
import threading
import time

from chain_helpers import SERVER_KEY
from processes import ROOT
from wire_helpers import receive

from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block, ClientUpdate, RunRecord, TrainingSettings
from fedchain.ledger.chain import make_closing_block, make_genesis, make_round_block
from fedchain.ledger.store import block_to_json
from fedchain.trust.keys import public_hex
from fedchain.trust.tls import server_context
from fedchain.wire.frames import ConnectionClosed, send_message

FEATURES = load_dataset(ROOT / "data" / "client1.csv").feature_names


class Session:
    """One client's connection to the fake server, past its login; what a script works with.
    Scripts say and hear messages through send() and receive(), so the same script can play a
    real client process over TLS or drive a client in this process (tests/client_steps.py)."""

    def __init__(self, conn: ssl.SSLSocket, registration: dict, key) -> None:
        self.conn = conn
        self.key = key
        self.client_key = registration["public_key"]
        self.genesis = self.make_genesis()
        self.last = self.genesis

    def send(self, message: dict) -> None:
        send_message(self.conn, message)

    def receive(self) -> dict:
        return receive(self.conn)

    def make_genesis(
        self,
        *,
        rounds=1,
        features=FEATURES,
        difficulty=8,
        participants=None,
        run_key=None,
        target=None,
    ) -> Block:
        participants = {"cli1": self.client_key} if participants is None else participants
        # RUN_KEY: a genesis made and signed by another server, valid in itself.
        run = RunRecord(rounds, 0, public_hex(run_key or self.key), participants, target=target)
        return make_genesis(
            initial_model=LinearModel.zeros(len(features)),
            feature_names=features,
            difficulty=difficulty,
            run=run,
            server_key=run_key or self.key,
        )

    def welcome(
        self, genesis: Block | None = None, blocks: tuple[Block, ...] = (), *, height=None
    ) -> None:
        """Welcome the client to GENESIS's run, and send BLOCKS after it to catch up on (saying
        it holds HEIGHT blocks, if given: a lie)."""
        self.genesis = self.last = genesis or self.genesis
        rounds = self.genesis.run.rounds if self.genesis.signed else 1
        self.send(
            {
                "type": "welcome",
                "genesis": block_to_json(self.genesis),
                "seed": 0,
                "rounds": rounds,
                "height": height or 1 + len(blocks),
            }
        )
        for block in blocks:
            self.send_block(block)

    def train(self, index: int | None = None, model: LinearModel | None = None) -> dict:
        model = model or self.last.server_model
        index = self.last.index + 1 if index is None else index
        self.send(
            {"type": "train", "round": index, "weights": model.weights.copy(), "bias": model.bias}
        )
        return self.receive()

    def honest_block(self, update: dict) -> Block:
        """The block an honest server makes of the client's UPDATE."""
        return make_round_block(
            self.last,
            {"cli1": as_client_update(update)},
            attestations={"cli1": update["attestation"].hex()},
            server_key=self.key,
        )

    def send_block(self, block: Block) -> None:
        self.send({"type": "block", "block": block_to_json(block)})
        self.last = block

    def run_honestly(self, rounds: int = 1, *, done: bool = True) -> None:
        self.welcome(self.make_genesis(rounds=rounds))
        for _ in range(rounds):
            self.send_block(self.honest_block(self.train()))
        self.send({"type": "close", "round": rounds + 1})
        attest = self.receive()
        closing = make_closing_block(
            self.last, attestations={"cli1": attest["attestation"].hex()}, server_key=self.key
        )
        self.send_block(closing)
        if done:
            self.send({"type": "done", "blocks": rounds + 2})


def as_client_update(update: dict) -> ClientUpdate:
    training = TrainingSettings(update["seed"], update["generations"], update["population"])
    model = LinearModel(update["weights"], update["bias"])
    return ClientUpdate(model, update["n_samples"], training, update["signature"].hex())


class Recording:
    """A TLS socket that keeps a copy of every byte read from it: what the client sent."""

    def __init__(self, sock: ssl.SSLSocket, record: bytearray) -> None:
        self.sock, self.record = sock, record

    def recv_into(self, buffer, size: int) -> int:
        count = self.sock.recv_into(buffer, size)
        self.record += bytes(buffer[:count])
        return count

    def __getattr__(self, name: str):  # sendall, settimeout, recv: the socket's own
        return getattr(self.sock, name)


class FakeServer:
    """Serves one client over TLS with SCRIPT(session) after its login, on a free port (with
    SCRIPTS in turn, one a connection, if given a list).

    The script runs in a thread, where a failed assertion would go unseen: finish() re-raises
    it in the test."""

    def __init__(
        self, script, *, key=SERVER_KEY, tls: bool = True, record=None, schema: str | None = None
    ) -> None:
        """SCHEMA: a private run's, sent with the challenge."""
        self.record = bytearray() if record is None else record
        self.schema = schema
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # to see finish(connections=...) stop it listening
        self.port = self.listener.getsockname()[1]
        self.scripts = script if isinstance(script, list) else [script]
        self.key, self.tls = key, tls
        self.session: Session | None = None
        self.connections = 0  # how many the scripts have been given
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        expected = (ConnectionClosed, ConnectionResetError, BrokenPipeError, ssl.SSLError)
        try:
            with self.listener:
                for script in self.scripts:
                    conn = self._accept()
                    if conn is None:
                        return
                    self.connections += 1
                    with contextlib.suppress(*expected):
                        self._serve_one(conn, script)
        except BaseException as error:  # handed to the test's thread by finish()
            self.failure = error

    def _accept(self) -> socket.socket | None:
        """The next connection, or None once finish() says no more will come."""
        deadline = time.monotonic() + 30
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                continue
            conn.settimeout(None)
            return conn
        return None

    def _serve_one(self, conn: socket.socket, script) -> None:
        if not self.tls:
            with conn:
                script(conn)
            return
        with server_context(self.key).wrap_socket(conn, server_side=True) as raw:
            # The client hangs up as soon as it refuses: that ends the script.
            raw.settimeout(30)
            tls = Recording(raw, self.record)
            challenge = {"type": "challenge", "challenge": bytes(32)}
            send_message(tls, challenge | ({"schema": self.schema} if self.schema else {}))
            registration = receive(tls)
            assert registration["type"] == "register"
            self.session = Session(tls, registration, self.key)
            script(self.session)
            with contextlib.suppress(TimeoutError):
                tls.recv(1)  # wait for the client to close

    def finish(self, *, connections: int | None = None) -> None:
        """Wait for the script to end; raise whatever failed in it. CONNECTIONS, once the
        client has ended: stop listening, and check it connected that many times (fewer than
        there are scripts: a client that never connects, or does not try again)."""
        if connections is not None:
            self._stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the fake server's script did not end"
        if self.failure is not None:
            raise self.failure
        if connections is not None:
            assert self.connections == connections, (
                f"the client connected {self.connections} times, not {connections}"
            )


def start_client(programs, tmp_path, port, *extra):
    return programs(
        "client1.py",
        "--port",
        port,
        "--replica",
        tmp_path / "cli1.jsonl",
        "--known-servers",
        tmp_path / "known_servers",
        *extra,
    )


def crash() -> None:
    """End the fake server's connection abruptly, as a killed server's would end."""
    raise ConnectionResetError("the fake server crashes")
