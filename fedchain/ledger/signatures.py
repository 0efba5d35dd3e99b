"""What each participant signs, as fixed bytes, and the signing and checking of it.

Every message starts with its own domain tag, so a signature made for one purpose (an update, an
attestation, a block) can never pass as another; and each binds the chain's genesis and the round,
so a signed update replayed into another round, another chain or under another name fails.
"""

import hashlib
from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block, ClientUpdate, PrivacyStatement
from fedchain.ledger.encoding import F64, U64, pack_floats, pack_hex, pack_model, pack_string
from fedchain.trust.keys import public_hex, sign, verify_signature


def update_message(
    *, genesis_hash: str, index: int, previous_hash: str, name: str, update: ClientUpdate
) -> bytes:
    """The bytes a client signs for its update to round INDEX (in format 4, with its gradient)."""
    training = update.training
    corrected = [pack_floats(update.gradient)] if update.gradient else []
    return b"".join(
        [
            b"fedchain update v4\0" if update.gradient else b"fedchain update v2\0",
            pack_hex(genesis_hash),
            U64.pack(index),
            pack_hex(previous_hash),
            pack_string(name),
            U64.pack(update.n_samples),
            pack_model(update.model),
            U64.pack(training.seed),
            U64.pack(training.generations),
            U64.pack(training.population),
            *corrected,
        ]
    )


def probe_message(
    *,
    genesis_hash: str,
    index: int,
    previous_hash: str,
    name: str,
    candidate: LinearModel,
    gradient: tuple[float, ...],
) -> bytes:
    """The bytes a client signs for its GRADIENT at the CANDIDATE of scaffold round INDEX."""
    return b"".join(
        [
            b"fedchain probe v4\0",
            pack_hex(genesis_hash),
            U64.pack(index),
            pack_hex(previous_hash),
            pack_string(name),
            pack_model(candidate),
            pack_floats(gradient),
        ]
    )


def privacy_message(
    *,
    server_key: str,
    name: str,
    mechanism: str,
    epsilon: float,
    delta: float,
    schema_digest: str,
) -> bytes:
    """The bytes a private client signs when it joins: how it protects its rows, for the runs of
    the server SERVER_KEY with the schema SCHEMA_DIGEST (the genesis it attests binds the run)."""
    return b"".join(
        [
            b"fedchain privacy v1\0",
            pack_hex(server_key),
            pack_string(name),
            pack_string(mechanism),
            F64.pack(epsilon),
            F64.pack(delta),
            pack_hex(schema_digest),
        ]
    )


def sign_privacy(
    key: Ed25519PrivateKey,
    *,
    server_key: str,
    name: str,
    mechanism: str,
    epsilon: float,
    delta: float,
    schema_digest: str,
) -> PrivacyStatement:
    """NAME's privacy statement for the runs of SERVER_KEY with the schema SCHEMA_DIGEST."""
    message = privacy_message(
        server_key=server_key,
        name=name,
        mechanism=mechanism,
        epsilon=epsilon,
        delta=delta,
        schema_digest=schema_digest,
    )
    return PrivacyStatement(mechanism, epsilon, delta, sign_hex(key, message))


def attestation_message(*, genesis_hash: str, block: Block) -> bytes:
    """The bytes a client signs to say it has verified BLOCK."""
    return b"".join(
        [
            b"fedchain attestation v2\0",
            pack_hex(genesis_hash),
            U64.pack(block.index),
            pack_hex(block.hash),
        ]
    )


def block_message(block_hash: str) -> bytes:
    """The bytes the server signs for a block: its hash, which covers everything else."""
    return b"fedchain block v2\0" + pack_hex(block_hash)


def sign_hex(key: Ed25519PrivateKey, message: bytes) -> str:
    """KEY's signature over MESSAGE, as it is stored: 128 hex digits."""
    signature = sign(key, message).hex()
    _remember(public_hex(key), signature, message)  # our own: checking it again proves nothing
    return signature


def signature_holds(public_key: str, signature: str, message: bytes) -> bool:
    """True if SIGNATURE (hex) is PUBLIC_KEY's over MESSAGE."""
    # The same signature is checked more than once in a round (as it arrives, then when its
    # block is appended), and a check costs several times a signature: remember the ones
    # that held. Keyed by the message's digest, so a wide model's update costs 32 bytes here.
    memo = (public_key, signature, hashlib.sha256(message).digest())
    if memo in _VERIFIED:
        _VERIFIED.move_to_end(memo)
        return True
    if not verify_signature(public_key, bytes.fromhex(signature), message):
        return False
    _remember(*memo[:2], message)
    return True


_VERIFIED: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
_MAX_VERIFIED = 4096  # a few rounds of a large run


def _remember(public_key: str, signature: str, message: bytes) -> None:
    _VERIFIED[(public_key, signature, hashlib.sha256(message).digest())] = None
    if len(_VERIFIED) > _MAX_VERIFIED:
        _VERIFIED.popitem(last=False)
