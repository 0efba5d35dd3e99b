"""A client with the protocol done by hand, for the tests that play a bad or precise peer: it
speaks TLS and signs as a real client does, but sends exactly what the test tells it to."""

import socket
import ssl
from pathlib import Path

import numpy as np
from chain_helpers import fixed_key, signed_update_message
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from processes import ROOT
from wire_helpers import receive

from fedchain.learning.dataset import load_dataset
from fedchain.ledger.block import Block
from fedchain.ledger.signatures import attestation_message
from fedchain.ledger.store import block_from_json
from fedchain.trust.handshake import login_message
from fedchain.trust.keys import public_hex, sign
from fedchain.trust.tls import client_context, peer_public_hex
from fedchain.wire.frames import send_message

FEATURES = list(load_dataset(ROOT / "data" / "client1.csv").feature_names)
N_SAMPLES = 535


def connect(port: int) -> socket.socket:
    """A plain TCP connection: what a peer that does not speak TLS opens."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def tls_connect(port: int) -> ssl.SSLSocket:
    return client_context().wrap_socket(connect(port))


class RawClient:
    """Connected over TLS and holding the server's login challenge; nothing sent yet."""

    def __init__(self, port: int, name: str, *, key=None) -> None:
        self.name = name
        self.key = key or fixed_key(name)
        self.sock = tls_connect(port)
        self.server_key = peer_public_hex(self.sock)
        self.challenge = receive(self.sock)["challenge"]
        self.genesis: Block | None = None
        self.last: Block | None = None

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def register(
        self, *, signing_key=None, server_key=None, challenge=None, n_samples=N_SAMPLES
    ) -> None:
        """Register with N_SAMPLES rows, signing the login with SIGNING_KEY (default: our own)
        over SERVER_KEY and CHALLENGE (default: this connection's)."""
        login = login_message(server_key or self.server_key, challenge or self.challenge, self.name)
        send_message(
            self.sock,
            {
                "type": "register",
                "name": self.name,
                "feature_names": FEATURES,
                "n_samples": n_samples,
                "public_key": public_hex(self.key),
                "login_signature": sign(signing_key or self.key, login),
            },
        )

    def hear_welcome(self) -> dict:
        """Read the welcome and the blocks it announces (to catch up on); keep the genesis and
        the last block; return the next message (the round's global model, say). What the
        server says it waits for (others to join) may come first, as a real client hears it."""
        welcome = receive(self.sock)
        while welcome["type"] == "waiting":
            welcome = receive(self.sock)
        assert welcome["type"] == "welcome", welcome
        self.genesis = self.last = block_from_json(welcome["genesis"])
        for _ in range(welcome["height"] - 1):
            self.hear_block()
        return receive(self.sock)

    def update(self, weights=None, *, index=None, previous=None, genesis=None, key=None) -> dict:
        """A signed update for the round after the last block, or as the arguments say."""
        weights = np.zeros(len(FEATURES)) if weights is None else weights
        previous = previous or self.last
        genesis = genesis or self.genesis
        index = previous.index + 1 if index is None else index
        return signed_update_message(
            self.name,
            key or self.key,
            weights,
            N_SAMPLES,
            genesis=genesis,
            previous=previous,
            index=index,
            round=self.last.index + 1,
            attestation=self.attestation(),
        )

    def attestation(self) -> bytes:
        return sign(self.key, attestation_message(genesis_hash=self.genesis.hash, block=self.last))

    def hear_block(self) -> Block:
        message = receive(self.sock)
        assert message["type"] == "block", message
        self.last = block_from_json(message["block"])
        return self.last

    def send(self, message: dict) -> None:
        send_message(self.sock, message)


def join_raw_clients(port: int, *names: str) -> list[RawClient]:
    """Join as NAMES, up to the first round's global model."""
    clients = [RawClient(port, name) for name in names]
    for client in clients:
        client.register()
    for client in clients:
        assert client.hear_welcome()["type"] == "train"
    return clients


def write_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Put KEY where a client program will load it, private to its owner."""
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
