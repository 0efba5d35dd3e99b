"""A real client, FederatedClient, run in this process against a fake server over loopback
sockets: the server says bytes given in advance, then hears the client out. For the tests that
feed a client many servers, where a process each would be far too slow."""

import pickle
import socket
import threading
from pathlib import Path

from chain_helpers import CLIENT_KEYS, SERVER_KEY
from processes import ROOT
from wire_helpers import frame

from fedchain.federation.client import ClientFailed, FederatedClient
from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block
from fedchain.ledger.store import block_to_json
from fedchain.settings import MAX_FRAME_BYTES
from fedchain.trust.keys import public_hex
from fedchain.wire.frames import ConnectionClosed
from fedchain.wire.messages import ProtocolError

TIMEOUT_S = 10.0  # a watchdog: the fake server half-closes once it has said all, so none waits
DOCUMENTED = (ClientFailed, ProtocolError, ConnectionClosed, OSError)  # OSError: TimeoutError too

DATA = load_dataset(ROOT / "data" / "client1.csv")
CLIENT_KEY = CLIENT_KEYS["cli1"]
SERVER_HEX = public_hex(SERVER_KEY)


def new_client(replica: Path, said: list[str], **options) -> FederatedClient:
    """cli1 with a short search (OPTIONS: other data, --max-rounds, ...)."""
    return FederatedClient(
        **{
            "name": "cli1",
            "data": DATA,
            "seed": None,
            "generations": 3,
            "population": 4,
            "replica": replica,
            "say": said.append,
            "key": CLIENT_KEY,
        }
        | options
    )


# Every honest message is built here, so a new field in the protocol is a change in one place.
def welcome(genesis: Block, **extra) -> dict:
    return {
        "type": "welcome",
        "genesis": block_to_json(genesis),
        "seed": genesis.run.seed,
        "rounds": genesis.run.rounds,
        "height": 1,
        **extra,
    }


def train(index: int, model: LinearModel) -> dict:
    return {"type": "train", "round": index, "weights": model.weights.copy(), "bias": model.bias}


def block_message(block: Block) -> dict:
    return {"type": "block", "block": block_to_json(block)}


def pickled(message: object) -> bytes:
    return frame(pickle.dumps(message, protocol=5))


def serve_bytes(conn: socket.socket, data: bytes) -> None:
    """Say DATA, close our side, then hear the client out until it hangs up."""
    with conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(1 << 16):
                pass
        except OSError:  # the client refused and hung up first
            pass


class Loopback:
    """A listening socket on 127.0.0.1, port 0, that pairs each client with a fake server."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT_S)

    def __enter__(self) -> "Loopback":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.close()

    def play(self, data: bytes, client: FederatedClient) -> BaseException | None:
        """Run CLIENT against a server that says DATA; return the error it failed with, if any.
        Anything but a documented failure propagates."""
        with socket.create_connection(self.listener.getsockname(), timeout=TIMEOUT_S) as sock:
            conn, _ = self.listener.accept()
            conn.settimeout(TIMEOUT_S)
            server = threading.Thread(target=serve_bytes, args=(conn, data), daemon=True)
            server.start()
            try:
                client.run(sock, MAX_FRAME_BYTES, SERVER_HEX)
                error = None
            except DOCUMENTED as failure:
                error = failure
        server.join(TIMEOUT_S)
        assert not server.is_alive(), "the fake server never heard the client hang up"
        return error
