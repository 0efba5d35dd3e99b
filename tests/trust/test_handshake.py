"""The signed login: it verifies for the server, challenge and name it was made for, and for no
other; a bit or byte off in the signature fails; what the peer sends can only fail, never crash."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.trust.errors import TrustError
from fedchain.trust.handshake import (
    CHALLENGE_BYTES,
    LOGIN_TAG,
    login_message,
    new_challenge,
    verify_login,
)
from fedchain.trust.keys import public_hex, sign

CLIENT = Ed25519PrivateKey.generate()
SERVER = public_hex(Ed25519PrivateKey.generate())
CHALLENGE = new_challenge()
SIGNATURE = sign(CLIENT, login_message(SERVER, CHALLENGE, "cli1"))


def test_a_valid_login_verifies():
    assert verify_login(public_hex(CLIENT), SIGNATURE, SERVER, CHALLENGE, "cli1")


def test_either_case_of_the_server_key_is_the_same_login():
    assert login_message(SERVER.upper(), CHALLENGE, "cli1") == login_message(
        SERVER, CHALLENGE, "cli1"
    )


def test_a_login_relayed_to_another_server_fails():
    other_server = public_hex(Ed25519PrivateKey.generate())
    assert not verify_login(public_hex(CLIENT), SIGNATURE, other_server, CHALLENGE, "cli1")


def test_a_login_replayed_on_another_connection_fails():
    assert not verify_login(public_hex(CLIENT), SIGNATURE, SERVER, new_challenge(), "cli1")


def test_a_login_under_another_name_fails():
    assert not verify_login(public_hex(CLIENT), SIGNATURE, SERVER, CHALLENGE, "cli2")


def test_a_login_by_another_key_fails():
    other = public_hex(Ed25519PrivateKey.generate())
    assert not verify_login(other, SIGNATURE, SERVER, CHALLENGE, "cli1")


@pytest.mark.parametrize("bit", [0, 7, 255, 256, 511])
def test_a_flipped_signature_bit_fails(bit):
    flipped = bytearray(SIGNATURE)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verify_login(public_hex(CLIENT), bytes(flipped), SERVER, CHALLENGE, "cli1")


@pytest.mark.parametrize("length", [0, 1, 32, 63])
def test_a_truncated_signature_fails(length):
    truncated = SIGNATURE[:length]
    assert not verify_login(public_hex(CLIENT), truncated, SERVER, CHALLENGE, "cli1")


@pytest.mark.parametrize(
    "client_key, signature, name",
    [
        ("nothex", SIGNATURE, "cli1"),
        (None, SIGNATURE, "cli1"),
        (public_hex(CLIENT), None, "cli1"),
        (public_hex(CLIENT), SIGNATURE.hex(), "cli1"),
        (public_hex(CLIENT), SIGNATURE, ""),
        (public_hex(CLIENT), SIGNATURE, " cli1"),
        (public_hex(CLIENT), SIGNATURE, "x" * 65),
        (public_hex(CLIENT), SIGNATURE, b"cli1"),
        (public_hex(CLIENT), SIGNATURE, None),
    ],
    # The keys are random: named cases give every run (and xdist worker) the same ids.
    ids=[
        "key-not-hex",
        "key-none",
        "signature-none",
        "signature-text",
        "name-empty",
        "name-leading-space",
        "name-65-characters",
        "name-bytes",
        "name-none",
    ],
)
def test_malformed_input_from_the_client_is_refused_not_raised(client_key, signature, name):
    assert verify_login(client_key, signature, SERVER, CHALLENGE, name) is False


def test_the_challenge_is_fresh_and_full_length():
    challenges = {new_challenge() for _ in range(100)}
    assert len(challenges) == 100
    assert all(len(c) == CHALLENGE_BYTES for c in challenges)


@pytest.mark.parametrize("challenge", [b"", b"\0" * 31, b"\0" * 33, "a" * 32, None])
def test_the_servers_own_bad_challenge_is_a_bug_and_raises(challenge):
    with pytest.raises(TrustError, match="challenge must be 32 bytes"):
        login_message(SERVER, challenge, "cli1")


def test_the_servers_own_bad_key_raises():
    with pytest.raises(TrustError, match="the server's public key must be 64 hex digits"):
        verify_login(public_hex(CLIENT), SIGNATURE, SERVER[:-1], CHALLENGE, "cli1")


def test_the_message_is_tagged_and_length_prefixed():
    message = login_message(SERVER, CHALLENGE, "cli1")
    assert message.startswith(len(LOGIN_TAG).to_bytes(4, "big") + LOGIN_TAG)
    assert message.endswith((4).to_bytes(4, "big") + b"cli1")
    assert len(message) == 4 + len(LOGIN_TAG) + 4 + 32 + 4 + CHALLENGE_BYTES + 4 + 4


def test_names_are_encoded_as_utf8_so_any_printable_name_can_log_in():
    message = login_message(SERVER, CHALLENGE, "Zoë 東京")
    assert message.endswith("Zoë 東京".encode())
    signature = sign(CLIENT, message)
    assert verify_login(public_hex(CLIENT), signature, SERVER, CHALLENGE, "Zoë 東京")
