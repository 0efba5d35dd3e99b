"""Hostile values for the fuzz tests, server's and client's alike: numbers of every awkward kind,
arrays of the wrong type or shape, and anything a message's field could be set to instead."""

import numpy as np
from hypothesis import strategies as st

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
arrays = (
    st.builds(np.array, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20))
    | st.builds(lambda n: np.zeros((n, 2)), st.integers(0, 4))
    | st.builds(lambda n: np.zeros(n), st.integers(0, 20))
    | st.just(np.zeros(12, dtype=">f4"))
    | st.just(np.arange(12))
)
values = st.one_of(
    numbers,
    st.text(max_size=80),
    st.binary(max_size=80),
    arrays,
    st.lists(st.text(max_size=10), max_size=20),
    st.dictionaries(st.text(max_size=5), numbers),
)
