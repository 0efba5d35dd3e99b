"""The convergence figure's data and the Axes it draws: round 0 kept, the global model measured
against least squares on the pooled rows, the clients apart, weights named per standard
deviation at their line ends. Matplotlib objects are inspected, never pixels."""

import itertools

import numpy as np
import pandas as pd
import pytest
from chain_helpers import FEATURES, build_chain

from fedchain.learning.dataset import Dataset
from fedchain.learning.linear_model import LinearModel, mse
from fedchain.ledger.block import TargetRecord
from fedchain.results.figure import (
    BASELINE_NOTE,
    Convergence,
    convergence,
    convergence_figure,
    excess_over_reference,
    global_errors,
    labelled_weights,
    spread,
    standardised_weights,
)


@pytest.fixture(scope="module")
def blocks():
    return build_chain(rounds=3, closed=True)


def rows(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(18, 65, n), rng.uniform(15, 55, n), rng.integers(0, 2, n)])
    y = 7.0 + 0.03 * X[:, 0] + 0.01 * X[:, 1] + 1.5 * X[:, 2] + rng.normal(0, 0.4, n)
    return Dataset(FEATURES, X, y)


@pytest.fixture(scope="module")
def with_reference(blocks):
    return convergence(blocks, test=rows(80, 1), pooled=rows(200, 2), target="charges")


def test_round_0_is_in_the_errors_and_on_the_panel(with_reference):
    assert list(global_errors(with_reference).index) == [0, 1, 2, 3]
    for series in excess_over_reference(with_reference).values():
        assert list(series.index) == [0, 1, 2, 3]
    top = convergence_figure(with_reference).axes[0]
    assert all(line.get_xdata()[0] == 0 for line in top.get_lines() if len(line.get_xdata()) > 2)


def test_the_pooled_excess_is_over_numpys_least_squares_and_never_below_it(blocks):
    pooled = rows(200, 2)
    data = convergence(blocks, test=rows(80, 1), pooled=pooled, target="y")
    A = np.hstack([pooled.X, np.ones((pooled.n_samples, 1))])
    theta = np.linalg.lstsq(A, pooled.y, rcond=None)[0]
    best = mse(LinearModel(theta[:-1], theta[-1]), pooled.X, pooled.y)
    excess = excess_over_reference(data)["pooled client rows"]
    for block in blocks[:4]:
        expected = mse(block.server_model, pooled.X, pooled.y) / best - 1
        assert excess[block.index] == pytest.approx(expected, rel=1e-9)
    assert (excess >= -1e-12).all()


def test_the_reference_is_a_line_at_zero_on_a_symlog_scale_when_given(with_reference):
    top = convergence_figure(with_reference).axes[0]
    reference = [line for line in top.get_lines() if line.get_label() == "pooled least squares"]
    assert len(reference) == 1 and set(reference[0].get_ydata()) == {0.0}
    assert top.get_yscale() == "symlog"
    assert top.get_ylim()[1] > excess_over_reference(with_reference)["pooled client rows"][0]


def test_without_a_reference_the_title_says_so_and_the_scale_is_log(blocks):
    data = convergence(blocks, test=rows(80, 1), target="charges")
    assert excess_over_reference(data) == {}
    top = convergence_figure(data).axes[0]
    assert "no pooled least-squares reference" in top.get_title()
    assert top.get_yscale() == "log"
    assert top.get_lines()[0].get_ydata()[0] == pytest.approx(data.start_mse)


def test_the_clients_errors_have_a_panel_of_their_own(with_reference):
    figure = convergence_figure(with_reference)
    global_panel, clients_panel = figure.axes[0], figure.axes[1]
    assert {line.get_label() for line in clients_panel.get_lines()} == {"cli1", "cli2"}
    assert not any(line.get_label().startswith("cli") for line in global_panel.get_lines())
    assert "its own rows" not in global_panel.get_title()


def made_up(weights: dict[str, float], sd: dict[str, float]) -> Convergence:
    """A two-round run whose last weights are WEIGHTS and features' spreads SD."""
    frame = pd.DataFrame([dict.fromkeys(weights, 0.0), weights], index=[0, 1])
    return Convergence(
        global_mse=pd.Series([0.2], index=[1]),
        start_mse=80.0,
        client_mse={"cli1": pd.Series([0.2], index=[1])},
        client_mse_what="its own rows",
        global_weights=frame,
        target="charges",
        genesis_hash="ab" * 32,
        source="made up",
        feature_sd=pd.Series(sd),
    )


# The bundled data's shape of the problem: age's weight is small per year but large per SD.
WEIGHTS = {
    "age": 0.034,
    "bmi": 0.013,
    "OHE_yes": 1.55,
    "OHE_1": 0.15,
    "OHE_2": 0.31,
    "OHE_3": 0.25,
    "OHE_4": 0.5,
    "OHE_5": 0.42,
    "OHE_male": -0.07,
}
SD = {
    "age": 14.0,
    "bmi": 6.1,
    "OHE_yes": 0.36,
    "OHE_1": 0.42,
    "OHE_2": 0.37,
    "OHE_3": 0.33,
    "OHE_4": 0.13,
    "OHE_5": 0.1,
    "OHE_male": 0.5,
}


def test_the_named_weights_are_the_largest_per_standard_deviation():
    data = made_up(WEIGHTS, SD)
    per_sd = {name: abs(WEIGHTS[name] * SD[name]) for name in WEIGHTS}
    assert labelled_weights(data) == sorted(per_sd, key=per_sd.get, reverse=True)[:5]
    assert "age" in labelled_weights(data)  # by raw size it would be last but two
    assert standardised_weights(data).loc[1, "age"] == pytest.approx(0.034 * 14.0)


def test_weights_are_named_at_their_line_ends_with_no_legend_and_the_ohe_columns_explained():
    weights = convergence_figure(made_up(WEIGHTS, SD)).axes[2]
    assert weights.get_legend() is None
    names = {text.get_text() for text in weights.texts}
    assert {"age", "smoker (OHE_yes)", "2 children (OHE_2)"} <= names
    assert "4 children (OHE_4)" not in names  # second by raw size, small per SD
    assert BASELINE_NOTE in names and "number of children" in BASELINE_NOTE


def test_names_that_would_overlap_are_set_apart_around_where_they_belong():
    assert spread([0.0, 50.0, 100.0], 10.0) == [0.0, 50.0, 100.0]
    placed = spread([0.0, 1.0, 2.0, 60.0], 10.0)
    assert placed == pytest.approx([-9.0, 1.0, 11.0, 60.0])
    assert all(b - a >= 10.0 - 1e-9 for a, b in itertools.pairwise(placed))


def test_the_title_says_the_targets_unit_where_the_chain_records_it(blocks):
    targeted = build_chain(
        rounds=3, closed=True, target=TargetRecord("charges", "ln(USD per year)")
    )
    data = convergence(targeted, test=rows(80, 1), target="charges")
    assert data.unit == "ln(USD per year)"
    assert (
        convergence_figure(data)._suptitle.get_text().endswith("; charges is in ln(USD per year)")
    )
    older = convergence(blocks, test=rows(80, 1), target="charges")  # records no target
    assert "is in" not in convergence_figure(older)._suptitle.get_text()
