"""One rule for names, integers and magnitudes, whoever applies it."""

import pytest

from fedchain.checks import (
    MAX_INT,
    MAX_NAME_CHARS,
    check_int,
    check_magnitude,
    check_name,
    check_names,
    describe,
    printable,
)


@pytest.mark.parametrize("name", ["cli1", "OHE_northwest", "é", "a b", "x" * MAX_NAME_CHARS])
def test_good_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "error", "expected"),
    [
        ("", ValueError, r"1\.\.64 characters"),
        ("x" * (MAX_NAME_CHARS + 1), ValueError, r"1\.\.64 characters"),
        (" cli1", ValueError, "no spaces around it"),
        ("cli1\t", ValueError, "no spaces around it"),
        ("a\nb", ValueError, "printable"),
        ("\x1b[2J", ValueError, "printable"),
        ("\ud800", ValueError, "printable"),
        (7, TypeError, "must be a string"),
    ],
)
def test_bad_names_are_refused(name, error, expected):
    with pytest.raises(error, match=expected):
        check_name(name, "a client's name")


def test_names_must_be_distinct_and_few():
    assert check_names(["a", "b"]) == ("a", "b")
    with pytest.raises(ValueError, match="repeated name, 'a'"):
        check_names(["a", "b", "a"])
    with pytest.raises(ValueError, match="at most 2 names"):
        check_names(["a", "b", "c"], max_count=2)
    with pytest.raises(TypeError):
        check_names("ab")


def test_integers_in_range():
    assert check_int(5, 1, MAX_INT) == 5
    with pytest.raises(ValueError, match="must be a positive integer, not 0"):
        check_int(0, 1, MAX_INT, "n_samples")
    with pytest.raises(ValueError, match="a non-negative integer"):
        check_int(-1, 0, MAX_INT)
    with pytest.raises(ValueError, match=r"an integer in 0\.\.64, not 65"):
        check_int(65, 0, 64)
    with pytest.raises(TypeError, match="not True"):
        check_int(True, 0, 64)  # a bool is not a count
    with pytest.raises(ValueError, match="an integer of 1001 bits"):
        check_int(2**1000, 0, 64)  # never printed in full


def test_magnitudes():
    assert check_magnitude(1e100) == 1e100 and check_magnitude(-3) == -3
    for bad in (1e101, float("inf"), float("nan"), 10**400):
        with pytest.raises(ValueError, match="finite and at most 1e\\+100"):
            check_magnitude(bad)
    with pytest.raises(TypeError):
        check_magnitude("1")


def test_what_a_peer_sent_is_shown_short_and_safe():
    assert describe("x" * 100) == repr("x" * 40) + "…"
    assert describe(b"bytes") == "a bytes"
    assert printable("\x1b[31mred") == "\\x1b[31mred"
    assert printable("y" * 500, limit=10) == "y" * 10 + "…"
