"""The restricted unpickler on its own: plain data loads; anything that could run, or unfold into
something huge, is refused before it is built."""

import os
import pickle
import pickletools

import numpy as np
import pytest
from wire_helpers import Exploit

from fedchain.checks import describe
from fedchain.wire.safe_unpickle import MAX_MEMO_READS, RefusedPickle, load_restricted
from fedchain.wire.safe_unpickle import (
    _frombuffer as array_from_buffer,  # the unpickler's array maker
)


def test_plain_data_and_numeric_arrays_load():
    data = {"a": [1, 2.5, "x", None, True, b"raw"], "w": np.arange(4.0)}
    loaded = load_restricted(pickle.dumps(data, protocol=5))
    assert loaded["a"] == data["a"]
    assert loaded["w"].tobytes() == data["w"].tobytes()


def test_a_dtype_given_fields_by_the_pickle_is_not_trusted():
    # What a crafted BUILD could do to the dtype before the array is made from it.
    with pytest.raises(RefusedPickle, match="not plain numbers"):
        array_from_buffer(bytes(8), np.dtype([("a", "<f8")]), (1,), "C")


def test_a_pickle_sharing_one_object_many_times_is_refused_before_it_is_built():
    # Each level holds the one below twice, through the memo: 40 levels would be 2**40 parts.
    nested: list = []
    for _ in range(40):
        nested = [nested, nested]
    payload = pickle.dumps(nested, protocol=5)
    reads = sum(op.name.endswith("GET") for op, _, _ in pickletools.genops(payload))
    assert reads > MAX_MEMO_READS
    with pytest.raises(RefusedPickle, match="more memo reads than a message needs"):
        load_restricted(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"(i__main__\nThing\n.",  # INST: build an instance of a named class
        b"\x80\x02c__builtin__\nobject\n)\x81.",  # NEWOBJ
        b"\x80\x02\x82\x01.",  # EXT1: the copyreg extension registry
        b"P1\n.",  # PERSID
    ],
)
def test_opcodes_messages_never_use_are_refused(payload):
    with pytest.raises(RefusedPickle, match="not allowed"):
        load_restricted(payload)


def test_huge_or_deep_values_are_described_briefly():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert describe(deep) == "a list"
    assert describe(10**5000) == "an integer of 16610 bits"
    assert describe("\x1b[2J" + "x" * 100).startswith("'\\x1b[2J")
    assert len(describe("x" * 10_000)) < 60


def test_exploits_are_refused_naming_what_they_wanted(tmp_path):
    target = tmp_path / "pwned"
    with pytest.raises(RefusedPickle, match=r"posix\.system, which is not allowed"):
        load_restricted(pickle.dumps(Exploit(os.system, f"touch {target}"), protocol=5))
    assert not target.exists()


def unframed(payload: bytes) -> bytes:
    """PAYLOAD without its FRAME opcode, so bytes can be spliced in by hand."""
    assert payload[2] == 0x95  # PROTO 5, then FRAME and its 8-byte length
    return payload[:2] + payload[11:]


ARRAY_PICKLE = unframed(pickle.dumps(np.arange(3.0), protocol=5))


def test_a_hand_spliced_array_pickle_still_loads():
    assert load_restricted(ARRAY_PICKLE).tobytes() == np.arange(3.0).tobytes()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # A dtype state with its flags set ("holds objects"): NumPy would trust it.
        (ARRAY_PICKLE.replace(b"K\x00t", b"K\x01t"), "not a plain number's"),
        (ARRAY_PICKLE.replace(b"\x8c\x01<", b"\x8c\x01X"), "not a plain number's"),
        # A second BUILD, on the array just made: ndarray.__setstate__ must never see it.
        (ARRAY_PICKLE[:-1] + b"}b.", "change an array after making it"),
        # LONG_BINPUT at index 2**28: the memo would grow to gigabytes.
        (b"\x80\x05Nr" + (2**28).to_bytes(4, "little") + b"0}.", "LONG_BINPUT, not allowed"),
    ],
)
def test_state_and_memo_tricks_are_refused(payload, expected):
    with pytest.raises(RefusedPickle, match=expected):
        load_restricted(payload)


COLLIDING_INT_ITEMS = b"".join(
    b"\x8a\x09" + (i * (2**61 - 1)).to_bytes(9, "little") + b"N" for i in range(1, 10)
)  # LONG1 keys i * (2**61 - 1), each with value None: every key has the same hash


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # Tuples nested 300,000 deep as a dict key: hashing it would overflow the C stack.
        (b"\x80\x05})" + b"\x85" * 300_000 + b"K\x01s.", "more tuples"),
        # Big integers that all hash alike, as dict keys: building the dict would be quadratic.
        (b"\x80\x05}(" + COLLIDING_INT_ITEMS + b"u.", "more big integers"),
        # Millions of empty lists: cheap to send, costly to build.
        (b"\x80\x05(" + b"]" * 200_000 + b"l.", "over 100000 pickle opcodes"),
    ],
)
def test_pickles_that_are_small_but_costly_to_build_are_refused(payload, expected):
    with pytest.raises(RefusedPickle, match=expected):
        load_restricted(payload)


def test_a_named_function_cannot_be_given_state():
    # GLOBAL numpy.dtype, then BUILD with a dict: on the real function it would set attributes.
    payload = b"\x80\x05cnumpy\ndtype\n}(\x8c\x0c__qualname__\x8c\x05pwnedub."
    with pytest.raises(RefusedPickle, match="change a function it named"):
        load_restricted(payload)
