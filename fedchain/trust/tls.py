"""TLS 1.3 contexts for the server and the client, and the key a peer's certificate carries.

No CA: the server's certificate is self-signed with its own Ed25519 key, the client accepts any
certificate in the handshake and then compares the key in it to the one it pinned. TLS 1.3's
CertificateVerify already proves the server holds that key's private half, so comparing keys
is enough, and chain validation would add nothing.
"""

import datetime
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from fedchain.trust.errors import TrustError
from fedchain.trust.keys import public_hex

CERTIFICATE_NAME = "fedchain server"
CERTIFICATE_YEARS = 10  # the key is what is pinned, not the certificate: it need not expire soon


def server_context(key: Ed25519PrivateKey) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting a self-signed certificate for KEY."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    certificate = _self_signed_certificate(key).public_bytes(serialization.Encoding.PEM)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # load_cert_chain reads only files: they live in a folder only we can enter (mkdtemp makes
    # it 0o700), and are gone before this returns.
    with tempfile.TemporaryDirectory(prefix="fedchain-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        _write_private(cert_path, certificate)
        _write_private(key_path, private)
        context.load_cert_chain(cert_path, key_path)
    return context


def client_context() -> ssl.SSLContext:
    """A TLS 1.3 client context that accepts any certificate: the caller pins its key instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # Order matters: verify_mode cannot drop to CERT_NONE while check_hostname is on.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_public_hex(tls_sock: ssl.SSLSocket) -> str:
    """The Ed25519 public key in the certificate TLS_SOCK's peer presented, as 64 hex digits."""
    der = tls_sock.getpeercert(binary_form=True)
    if der is None:
        raise TrustError("the peer presented no certificate, so it has no key to check")
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as error:
        raise TrustError(f"the peer's certificate cannot be read: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(
            f"the peer's certificate holds a {type(key).__name__}, not an Ed25519 key:"
            " it is not a fedchain server"
        )
    return public_hex(key)


def _self_signed_certificate(key: Ed25519PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERTIFICATE_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    # fedchain pins the key and never checks these dates; a day's margin keeps them plausible to
    # a tool that does, on a machine whose clock runs a little behind.
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CERTIFICATE_YEARS))
        .sign(key, algorithm=None)  # Ed25519 hashes internally: no separate digest to name
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as file:
        file.write(data)
