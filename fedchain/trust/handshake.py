"""The bytes a client signs to log in, and the server's check of that signature.

The message binds the server's key (so a login cannot be relayed to another server), a fresh
challenge (so it cannot be replayed on another connection) and the name (so it cannot be used
for another client), under a tag no other fedchain signature starts with.
"""

import os
import struct

from fedchain.checks import check_name
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import check_public_hex, verify_signature

LOGIN_TAG = b"fedchain-login-v1"
CHALLENGE_BYTES = 32  # 256 random bits: a challenge never repeats


def new_challenge() -> bytes:
    """A fresh random challenge for one connection."""
    return os.urandom(CHALLENGE_BYTES)


def login_message(server_public_hex: str, challenge: bytes, client_name: str) -> bytes:
    """The exact bytes CLIENT_NAME signs to log in to SERVER_PUBLIC_HEX with CHALLENGE."""
    server_key = bytes.fromhex(check_public_hex(server_public_hex, "the server's public key"))
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise TrustError(f"a login challenge must be {CHALLENGE_BYTES} bytes")
    name = check_name(client_name, "a client name").encode("utf-8")
    # Every field, the tag too, carries a length: no two different logins share their bytes,
    # and a message of another kind with another tag can never read as a login.
    return b"".join(_field(f) for f in (LOGIN_TAG, server_key, challenge, name))


def verify_login(
    client_public_hex: str,
    signature: bytes,
    server_public_hex: str,
    challenge: bytes,
    client_name: str,
) -> bool:
    """True if SIGNATURE is CLIENT_PUBLIC_HEX's login as CLIENT_NAME here, with this challenge."""
    # The client's key, signature and name come from the peer: any fault in them is a refusal.
    # The server's key and the challenge are this server's own, so a fault there raises.
    try:
        check_name(client_name)
    except (TypeError, ValueError):
        return False
    message = login_message(server_public_hex, challenge, client_name)
    return verify_signature(client_public_hex, signature, message)


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data
