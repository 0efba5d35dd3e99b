"""Ed25519 identities: a participant's private key on disk (created on first run, readable by its
owner only), its public key as 64 hex digits, and signatures a peer's bad input can fail but not
crash.
"""

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedchain.checks import describe
from fedchain.files import create_whole
from fedchain.trust.errors import TrustError
from fedchain.trust.strict_modes import check_folder_of, make_private_folders, read_trust_file

PUBLIC_HEX_DIGITS = 64  # an Ed25519 public key is 32 bytes
SIGNATURE_BYTES = 64
MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM Ed25519 key is 119 bytes; anything huge is not one
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def load_or_create_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The private key in PATH, created now if the file is missing; True if it was created."""
    path = Path(path)
    try:
        return _load_private_key(path), False
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if _write_new_file(path, pem):
        return key, True
    # Another program created the key between our look and our link: use theirs, not ours.
    return _load_private_key(path), False


def existing_key(path: Path) -> Ed25519PrivateKey | None:
    """The private key in PATH, or None if there is no file there (none is made)."""
    try:
        return _load_private_key(Path(path))
    except FileNotFoundError:
        return None


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """KEY's raw 32-byte public key as 64 lowercase hex digits."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw().hex()


def check_public_hex(text: object, what: str = "a public key") -> str:
    """TEXT in lowercase, the form files and messages use, if it is 64 hex digits of either case."""
    if not isinstance(text, str):
        raise TypeError(
            f"{what} must be a string of {PUBLIC_HEX_DIGITS} hex digits, not {describe(text)}"
        )
    # Checked digit by digit: int(text, 16) and bytes.fromhex would let '0x', '_' and spaces in.
    if len(text) != PUBLIC_HEX_DIGITS:
        raise TrustError(
            f"{what} must be {PUBLIC_HEX_DIGITS} hex digits, not {len(text)} characters"
            f" ({describe(text)})"
        )
    if not _HEX_DIGITS.issuperset(text):
        bad = next(c for c in text if c not in _HEX_DIGITS)
        raise TrustError(f"{what} must be hex digits only, not {describe(bad)} in {describe(text)}")
    return text.lower()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """The Ed25519 public key written as TEXT (64 hex digits)."""
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(check_public_hex(text)))


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """KEY's 64-byte signature of MESSAGE."""
    return key.sign(message)


def verify_signature(public_hex: str, signature: bytes, message: bytes) -> bool:
    """True if SIGNATURE is PUBLIC_HEX's signature of MESSAGE; False for anything else."""
    # The key and the signature come from peers: any shape of them is an answer, never a crash.
    # MESSAGE is built by our own code, so a wrong type there is our bug and raises.
    if not isinstance(message, bytes):
        raise TypeError(f"the signed message must be bytes, not {type(message).__name__}")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public_key_from_hex(public_hex).verify(signature, message)
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    data = read_trust_file(path, secret=True, max_bytes=MAX_KEY_FILE_BYTES)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way to say that the key needs a password
        raise TrustError(
            f"{path} holds an encrypted key; fedchain keys are unencrypted PEM, protected by"
            " the file's permissions: give another path to have a new key made there"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TrustError(
            f"{path} is not a PEM private key: check the path, or move the file away to have"
            " a new key made there"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def _write_new_file(path: Path, data: bytes) -> bool:
    """Write DATA to PATH if PATH does not exist, whole or not at all; False if it appeared."""
    check_folder_of(path)  # before the key is made: it would be refused once made
    make_private_folders(path.parent)
    try:
        os.close(create_whole(path, data, mode=0o600))  # private before anything is in it
    except FileExistsError:
        return False  # a key someone else wrote first is kept
    return True
