"""Ed25519 identities: made once and reused, refused when others can read them or they are not
Ed25519 keys, and signatures that fail, never crash, on whatever a peer sends."""

import os
import stat
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedchain.trust.errors import TrustError
from fedchain.trust.keys import (
    check_public_hex,
    load_or_create_key,
    public_hex,
    public_key_from_hex,
    sign,
    verify_signature,
)


def test_a_missing_key_is_created_private_and_then_reused(tmp_path):
    path = tmp_path / "keys" / "server.key"
    key, created = load_or_create_key(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again, created = load_or_create_key(path)
    assert not created
    assert public_hex(again) == public_hex(key)
    assert os.listdir(path.parent) == ["server.key"]  # no temporary file left behind


def test_a_permissive_umask_does_not_open_the_key(tmp_path):
    previous = os.umask(0)
    try:
        load_or_create_key(tmp_path / "keys" / "server.key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "keys" / "server.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_an_existing_folder_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    load_or_create_key(tmp_path / "cli1.key")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_concurrent_creators_end_with_one_key(tmp_path):
    path = tmp_path / "keys" / "cli1.key"
    results, start = [], threading.Barrier(8)

    def create():
        start.wait()
        results.append(load_or_create_key(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8
    assert {public_hex(key) for key, _ in results} == {public_hex(load_or_create_key(path)[0])}
    assert sum(created for _, created in results) == 1
    assert os.listdir(path.parent) == ["cli1.key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602, 0o644])
def test_a_key_others_can_reach_is_refused(tmp_path, mode):
    path = tmp_path / "server.key"
    load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(TrustError, match=f"chmod 600 {path}"):
        load_or_create_key(path)


def test_a_key_in_a_folder_others_may_write_is_refused(tmp_path):
    # They could have put a key of their own there, and so know the one in use.
    folder = tmp_path / "keys"
    load_or_create_key(folder / "server.key")
    folder.chmod(0o777)
    with pytest.raises(TrustError, match=f"run `chmod go-w {folder}`"):
        load_or_create_key(folder / "server.key")


def test_no_key_is_made_in_a_folder_others_may_write(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o775)
    folder.chmod(0o775)
    with pytest.raises(TrustError, match=f"{folder}, the folder of {folder / 'cli1.key'}"):
        load_or_create_key(folder / "cli1.key")
    assert os.listdir(folder) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_a_key_someone_else_owns_is_refused(tmp_path):
    path = tmp_path / "server.key"
    load_or_create_key(path)
    os.chown(path, 54_321, -1)
    with pytest.raises(TrustError, match=f"{path} belongs to user 54321"):
        load_or_create_key(path)


def test_the_folders_made_above_a_new_key_are_private_too(tmp_path):
    previous = os.umask(0)
    try:
        load_or_create_key(tmp_path / "run" / "keys" / "server.key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700


def test_a_file_that_is_not_a_key_is_refused(tmp_path):
    path = tmp_path / "server.key"
    path.write_text("hello\n")
    path.chmod(0o600)
    with pytest.raises(TrustError, match=f"{path} is not a PEM private key"):
        load_or_create_key(path)
    assert path.read_text() == "hello\n"  # never overwritten


def test_a_key_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "server.key"
    other = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(TrustError, match=f"{path} holds an? .*not an Ed25519"):
        load_or_create_key(path)


def test_an_encrypted_key_is_refused(tmp_path):
    path = tmp_path / "server.key"
    path.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    path.chmod(0o600)
    with pytest.raises(TrustError, match=f"{path} holds an encrypted key"):
        load_or_create_key(path)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(mode=0o700), lambda p: os.mkfifo(p, 0o600)])
def test_a_folder_or_a_fifo_is_not_a_key(tmp_path, make):
    make(tmp_path / "server.key")
    with pytest.raises(TrustError, match="not a regular file"):
        load_or_create_key(tmp_path / "server.key")


def test_public_hex_round_trips_in_either_case():
    key = ed25519.Ed25519PrivateKey.generate()
    text = public_hex(key)
    assert len(text) == 64 and text == text.lower()
    assert public_hex(key.public_key()) == text
    assert public_hex(public_key_from_hex(text.upper())) == text
    assert check_public_hex(text.upper()) == text


@pytest.mark.parametrize(
    "text, message",
    [
        ("ab" * 31, "64 hex digits, not 62 characters"),
        ("ab" * 33, "not 66 characters"),
        ("", "not 0 characters"),
        ("g" + "a" * 63, "hex digits only, not 'g'"),
        (" " + "a" * 63, "hex digits only"),
        ("0x" + "a" * 62, "hex digits only, not 'x'"),
        ("_" + "a" * 63, "hex digits only"),
        ("\u0661" * 64, "hex digits only"),  # Arabic-Indic one: a digit, but not a hex digit
    ],
)
def test_a_malformed_public_key_is_refused_saying_why(text, message):
    with pytest.raises(TrustError, match=message):
        public_key_from_hex(text)


def test_a_public_key_must_be_a_string():
    with pytest.raises(TypeError, match="a public key must be a string"):
        check_public_hex(b"ab" * 32)


def test_a_signature_verifies_only_for_its_key_and_message():
    key = ed25519.Ed25519PrivateKey.generate()
    signature = sign(key, b"round 1")
    assert len(signature) == 64
    assert verify_signature(public_hex(key), signature, b"round 1")
    assert verify_signature(public_hex(key).upper(), signature, b"round 1")
    assert not verify_signature(public_hex(key), signature, b"round 2")
    other = public_hex(ed25519.Ed25519PrivateKey.generate())
    assert not verify_signature(other, signature, b"round 1")


KEY = ed25519.Ed25519PrivateKey.generate()
GOOD = sign(KEY, b"message")


@pytest.mark.parametrize(
    "public",
    [
        "ab" * 31,  # too short
        "zz" * 32,  # not hex
        None,
        b"ab" * 32,  # bytes, not text
        "00" * 32,  # 32 bytes, but no signature verifies under it
        public_hex(ed25519.Ed25519PrivateKey.generate()),  # another key
    ],
    # KEY and the other key are random: name the cases so every run collects the same ids.
    ids=["too-short", "not-hex", "none", "bytes", "no-signature-verifies", "another-key"],
)
def test_a_bad_key_from_a_peer_is_false_not_an_error(public):
    assert verify_signature(public, GOOD, b"message") is False


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        b"\0" * 64,
        GOOD + b"\0",  # one byte more
        GOOD[:-1],  # one byte less
        bytes([GOOD[0] ^ 1]) + GOOD[1:],  # one bit flipped
        GOOD[:32] + bytes([GOOD[32] ^ 0x80]) + GOOD[33:],  # a bit of S flipped
        GOOD.hex(),  # text, not bytes
        bytearray(GOOD),  # the right bytes in the wrong type
        None,
        12,
    ],
    ids=[
        "empty",
        "zeros",
        "one-byte-more",
        "one-byte-less",
        "one-bit-flipped",
        "bit-of-s-flipped",
        "text",
        "bytearray",
        "none",
        "int",
    ],
)
def test_a_bad_signature_from_a_peer_is_false_not_an_error(signature):
    assert verify_signature(public_hex(KEY), signature, b"message") is False


def test_a_message_that_is_not_bytes_is_our_bug_and_raises():
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(TypeError, match="must be bytes"):
        verify_signature(public_hex(key), sign(key, b"x"), "x")
