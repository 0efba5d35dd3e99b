"""Proof of work: find a nonce whose block hash falls below the difficulty's target, fast."""

import functools
import hashlib
import time
from dataclasses import replace

from fedchain.checks import check_int
from fedchain.ledger.block import MAX_DIFFICULTY_BITS, Block, body_digest


def meets_difficulty(hash_hex: str, difficulty: int) -> bool:
    """True if the hash, read as a 256-bit number, is below 2^(256 - difficulty)."""
    return int(hash_hex, 16) >> (256 - difficulty) == 0


def seal(block: Block) -> Block:
    """Mine BLOCK: the same block with the first nonce whose hash meets its difficulty."""
    nonce, hash_hex = mine(body_digest(block), block.difficulty)
    return replace(block, nonce=nonce, hash=hash_hex)


def mine(digest: bytes, difficulty: int) -> tuple[int, str]:
    """Find the first nonce whose hash over DIGEST meets DIFFICULTY; return it with the hash."""
    # The body is hashed once, outside. The nonce's high six bytes are absorbed into a
    # prepared SHA-256 state once per 65,536 tries; each try copies that state and feeds it
    # two ready-made bytes, so a try is one compression and three C calls, no Python arithmetic.
    check_int(difficulty, 0, MAX_DIFFICULTY_BITS, "difficulty")
    # Digests compare as big-endian numbers, so comparing bytes against the target works.
    target = (1 << (256 - difficulty)).to_bytes(33, "big")[1:] if difficulty else b"\xff" * 33
    suffixes = _low_nonce_suffixes()
    for high in range(1 << 48):
        copy = hashlib.sha256(digest + high.to_bytes(6, "big")).copy
        for suffix in suffixes:
            h = copy()
            h.update(suffix)
            if h.digest() < target:
                return (high << 16) | int.from_bytes(suffix, "big"), h.hexdigest()
    raise RuntimeError(f"no 64-bit nonce meets difficulty {difficulty}")  # odds: nil


@functools.cache
def _low_nonce_suffixes() -> tuple[bytes, ...]:
    return tuple(low.to_bytes(2, "big") for low in range(1 << 16))


def tries_per_second(sample_s: float = 0.05) -> float:
    """How many nonces this machine tries a second, timed over about SAMPLE_S seconds of the
    real loop (at a difficulty no hash meets within the sample)."""
    digest, started, tries = b"\0" * 32, time.perf_counter(), 0
    copy = hashlib.sha256(digest).copy
    suffixes = _low_nonce_suffixes()[:4096]
    while True:  # one batch at least: a process paused past the sample still measures a rate
        for suffix in suffixes:
            h = copy()
            h.update(suffix)
            h.digest()
        tries += len(suffixes)
        if (elapsed := time.perf_counter() - started) >= sample_s:
            return tries / elapsed


def expected_mining_s(difficulty: int, rate: float) -> float:
    """The mean time to mine a block at DIFFICULTY bits, trying RATE nonces a second."""
    return 2.0**difficulty / rate
