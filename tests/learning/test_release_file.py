"""A private client's one release is kept and reused, and never silently made again: new rows or
a new budget are refused, naming the file to remove."""

import stat

import numpy as np
import pytest

from fedchain import settings
from fedchain.learning.dataset import DataError, load_dataset
from fedchain.learning.release_file import load_or_release, release_path
from fedchain.learning.schema import load_schema

SCHEMA = load_schema(settings.bundled_data("schema.csv"))


@pytest.fixture
def data():
    return load_dataset(settings.bundled_data("client1.csv"))


def test_a_release_is_kept_private_and_reused_bit_for_bit_in_any_column_order(tmp_path, data):
    path = release_path(tmp_path, "cli1")
    made, new = load_or_release(
        path, data, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5
    )
    assert new and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, new = load_or_release(
        path, data, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5
    )
    assert not new and again.n_samples == made.n_samples
    assert again.moments.gram.tobytes() == made.moments.gram.tobytes()
    reordered = data.in_order(data.feature_names[::-1])
    turned, _ = load_or_release(
        path, reordered, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5
    )
    d = len(data.feature_names)
    order = [*range(d - 1, -1, -1), d, d + 1]
    assert np.array_equal(turned.moments.gram, made.moments.gram[np.ix_(order, order)])


def test_two_releases_of_the_same_rows_differ_the_noise_is_secret(tmp_path, data):
    first, _ = load_or_release(
        tmp_path / "a.json", data, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5
    )
    second, _ = load_or_release(
        tmp_path / "b.json", data, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5
    )
    assert not np.array_equal(first.moments.gram, second.moments.gram)


def test_another_budget_or_new_rows_are_refused_naming_the_file(tmp_path, data):
    path = release_path(tmp_path, "cli1")
    load_or_release(path, data, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5)
    with pytest.raises(DataError, match=r"at ε 1, δ 1e-05, not ε 2, δ 1e-05 .*remove .*cli1"):
        load_or_release(path, data, target="charges", schema=SCHEMA, epsilon=2.0, delta=1e-5)
    changed = type(data)(data.feature_names, data.X.copy(), data.y.copy())
    changed.X[0, 0] += 1
    with pytest.raises(DataError, match="the rows changed since this client released"):
        load_or_release(path, changed, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5)


def test_a_damaged_release_file_is_refused_naming_it(tmp_path, data):
    path = tmp_path / "release.json"
    path.write_text('{"sums": "no"}')
    with pytest.raises(DataError, match=f"{path}: cannot read this client's release"):
        load_or_release(path, data, target="charges", schema=SCHEMA, epsilon=1.0, delta=1e-5)
