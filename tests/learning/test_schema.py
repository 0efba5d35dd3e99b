"""The public bounds: read from CSV, refused with the file and line when wrong, matched to the
data's columns by name, and named exactly by a digest."""

import numpy as np
import pytest

from fedchain import settings
from fedchain.learning.dataset import DataError, load_dataset
from fedchain.learning.schema import Schema, load_schema, parse_schema


def test_the_bundled_schema_bounds_every_bundled_column():
    schema = load_schema(settings.bundled_data("schema.csv"))
    data = load_dataset(settings.bundled_data("client1.csv"), target=settings.TARGET)
    low, high = schema.ranges(data.feature_names, settings.TARGET)
    values = np.column_stack([data.X, data.y])
    assert np.all(values >= low) and np.all(values <= high)


def test_ranges_follow_the_data_s_column_order_not_the_file_s():
    schema = parse_schema("column,low,high\ny,0,1\nb,2,3\na,4,5\n")
    low, high = schema.ranges(("a", "b"), "y")
    assert low.tolist() == [4, 2, 0] and high.tolist() == [5, 3, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "first line must be column,low,high"),
        ("name,min,max\na,0,1\n", "first line must be column,low,high"),
        ("column,low,high\n", "no column is listed"),
        ("column,low,high\na,0,1\na,0,2\n", "line 3: column 'a' is listed twice"),
        ("column,low,high\na,0\n", "line 2: expected column,low,high, got 2 cells"),
        ("column,low,high\na,zero,1\n", "line 2: could not convert"),
        ("column,low,high\na,1,1\n", "line 2: a: the bounds must be finite with low < high"),
        ("column,low,high\na,2,1\n", "line 2: a: the bounds must be finite"),
        ("column,low,high\na,nan,1\n", "line 2: a: the bounds must be finite"),
        ("column,low,high\na,0,inf\n", "line 2: a: the bounds must be finite"),
        # Past the csv module's limit on a cell (what a server, or a chain, may send a client).
        ("column,low,high\n" + "a" * 200_000 + ",0,1\n", "line 2: field larger than"),
    ],
)
def test_a_bad_schema_is_refused_naming_the_file_and_line(text, message):
    with pytest.raises(DataError, match=message) as refused:
        parse_schema(text, source="bounds.csv")
    assert str(refused.value).startswith("bounds.csv")


def test_a_column_missing_from_the_schema_or_extra_in_it_is_named():
    schema = parse_schema("column,low,high\nage,18,65\nregion,0,1\ncharges,6,12\n")
    with pytest.raises(DataError, match="missing 'bmi'; extra 'region'"):
        schema.ranges(("age", "bmi"), "charges")


def test_the_digest_names_the_bounds_exactly_and_survives_a_round_trip():
    schema = parse_schema("column,low,high\na,0.1,1\ny , -3 , 3e2\n")
    again = parse_schema(schema.canonical())
    assert again == schema and again.digest() == schema.digest()
    nudged = Schema({"a": (0.1, 1.0), "y": (-3.0, 300.00000000000006)})
    assert nudged.digest() != schema.digest()


def test_a_column_whose_name_needs_quoting_survives_a_round_trip():
    # Names may hold commas and quotes; the canonical text, which is what the genesis records
    # and a client parses, must quote them or it reads as another schema, or as none.
    schema = parse_schema('column,low,high\n"a,b",0,1\n"say ""hi""",2,3\ny,4,5\n')
    assert list(schema.bounds) == ["a,b", 'say "hi"', "y"]
    again = parse_schema(schema.canonical())
    assert again == schema and again.canonical() == schema.canonical()
    plain = parse_schema("column,low,high\na,0.1,1\ny,-3,300\n")
    assert plain.canonical() == "column,low,high\na,0.1,1.0\ny,-3.0,300.0\n"
