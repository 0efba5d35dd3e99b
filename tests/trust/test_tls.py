"""TLS 1.3 over real sockets on 127.0.0.1: the handshake, the server's key as the client reads it,
and the peers refused: plain text, older TLS, a certificate with a key of another kind."""

import contextlib
import datetime
import os
import socket
import ssl
import tempfile
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from processes import WAIT_S

from fedchain.trust.errors import TrustError
from fedchain.trust.keys import public_hex
from fedchain.trust.tls import client_context, peer_public_hex, server_context

SERVER_KEY = Ed25519PrivateKey.generate()


class OneConnectionServer:
    """Accepts one connection on 127.0.0.1 in a thread, wraps it in TLS and runs HANDLE on it."""

    def __init__(self, context: ssl.SSLContext, handle=lambda tls: tls.version()) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT_S)  # a client that never comes fails the test, not hangs it
        self.address = self.listener.getsockname()
        self.result = self.error = None
        self.thread = threading.Thread(target=self._serve, args=(context, handle), daemon=True)
        self.thread.start()

    def _serve(self, context, handle) -> None:
        try:
            connection, _ = self.listener.accept()
            connection.settimeout(WAIT_S)
            with context.wrap_socket(connection, server_side=True) as tls:
                self.result = handle(tls)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError; the test reads it
            self.error = error
        finally:
            self.listener.close()

    def finish(self) -> "OneConnectionServer":
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the server thread is still running"
        return self


def connect_tls(address) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=WAIT_S)
    return client_context().wrap_socket(raw)


def echo_line(tls: ssl.SSLSocket) -> bytes:
    line = tls.recv(100)
    tls.sendall(line.upper())
    return line


def test_the_handshake_carries_data_and_the_servers_key():
    server = OneConnectionServer(server_context(SERVER_KEY), echo_line)
    with connect_tls(server.address) as tls:
        assert peer_public_hex(tls) == public_hex(SERVER_KEY)
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"hello\n")
        assert tls.recv(100) == b"HELLO\n"
    assert server.finish().error is None
    assert server.result == b"hello\n"


def test_the_server_speaks_tls_13_only():
    server = OneConnectionServer(server_context(SERVER_KEY))
    with connect_tls(server.address):
        pass
    assert server.finish().result == "TLSv1.3"


def test_another_servers_key_is_told_apart():
    other = Ed25519PrivateKey.generate()
    server = OneConnectionServer(server_context(other))
    with connect_tls(server.address) as tls:
        assert peer_public_hex(tls) == public_hex(other) != public_hex(SERVER_KEY)
    server.finish()


def test_a_plaintext_client_fails_cleanly_on_the_server():
    server = OneConnectionServer(server_context(SERVER_KEY))
    with socket.create_connection(server.address, timeout=WAIT_S) as plain:
        plain.sendall(b"\x00\x00\x00\x05hello")  # a frame as the plain protocol sent it
        # The server gives up on the handshake and closes: the client sees an end, not a hang
        # (perhaps after an alert; a reset when the server closed with our bytes unread).
        with contextlib.suppress(ConnectionResetError):
            while plain.recv(100):
                pass
    assert isinstance(server.finish().error, ssl.SSLError), server.error
    assert server.result is None


def test_a_tls_12_client_is_refused():
    server = OneConnectionServer(server_context(SERVER_KEY))
    old = client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(server.address, timeout=WAIT_S)
    with pytest.raises(ssl.SSLError):
        old.wrap_socket(raw)
    raw.close()
    assert isinstance(server.finish().error, ssl.SSLError)


def test_a_plaintext_server_fails_the_clients_handshake():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT_S)

    def answer_in_plain_text():
        connection, _ = listener.accept()
        with connection:
            connection.recv(1000)
            connection.sendall(b"\x00\x00\x00\x05hello")

    thread = threading.Thread(target=answer_in_plain_text, daemon=True)
    thread.start()
    raw = socket.create_connection(listener.getsockname(), timeout=WAIT_S)
    with pytest.raises(ssl.SSLError):
        client_context().wrap_socket(raw)
    raw.close()
    thread.join(WAIT_S)
    listener.close()


def test_a_certificate_with_another_kind_of_key_is_refused(tmp_path):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not fedchain")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = OneConnectionServer(context)
    with connect_tls(server.address) as tls, pytest.raises(TrustError, match="not an Ed25519"):
        peer_public_hex(tls)
    server.finish()


def test_the_certificate_is_self_signed_by_the_key_it_carries():
    server = OneConnectionServer(server_context(SERVER_KEY))
    with connect_tls(server.address) as tls:
        certificate = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    server.finish()
    cn = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert cn == ["fedchain server"]
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)  # raises if the signature is wrong
    now = datetime.datetime.now(datetime.UTC)
    assert certificate.not_valid_before_utc < now - datetime.timedelta(hours=23)
    assert certificate.not_valid_after_utc > now + datetime.timedelta(days=365 * 9)


def test_server_context_leaves_no_files_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server_context(SERVER_KEY)
    assert os.listdir(tmp_path) == []


def test_two_contexts_for_one_key_present_the_same_key():
    first, second = server_context(SERVER_KEY), server_context(SERVER_KEY)
    keys = []
    for context in (first, second):
        server = OneConnectionServer(context)
        with connect_tls(server.address) as tls:
            keys.append(peer_public_hex(tls))
        server.finish()
    assert keys == [public_hex(SERVER_KEY)] * 2
