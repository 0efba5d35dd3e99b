"""The convergence figure: the error per round of the global model and of each client's, and
each weight's path over the rounds. Drawn on matplotlib's Agg canvas, so it needs no display."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedchain.learning.dataset import Dataset
from fedchain.ledger.block import Block
from fedchain.results.history import errors_on, global_rounds, last_round

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 5.0, 100  # 1200 x 500 pixels: legible at 100 %
LABELLED_WEIGHTS = 5  # the largest few by their last value; the rest drawn thin and grey
FONT_PT = 11


@dataclass(frozen=True)
class Convergence:
    """What the figure shows, computed from a verified chain (and the server's metrics)."""

    global_mse: pd.Series  # by round from 1: the global model's MSE on the held-out rows
    start_mse: float | None  # the starting model's (round 0), off the scale of the rest
    client_mse: dict[str, pd.Series]  # each client's, by round
    client_mse_what: str  # what the clients' MSE is measured on, for the legend
    global_weights: pd.DataFrame  # one row per round (the index), a column per feature
    target: str
    genesis_hash: str
    source: str  # where the errors came from, for the caption


def draw_convergence(data: Convergence, path: str | Path | BinaryIO) -> None:
    """Write the figure to PATH (or a binary file) as a PNG of WIDTH_IN x HEIGHT_IN inches at
    DPI."""
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    errors, weights = figure.subplots(1, 2)
    _draw_errors(errors, data)
    _draw_weights(weights, data)
    figure.suptitle(
        f"Federated training recorded on chain {data.genesis_hash[:12]}…: "
        f"convergence over {int(data.global_weights.index.max())} rounds",
        fontsize=FONT_PT + 3,
    )
    figure.savefig(path, format="png", dpi=DPI)


def _draw_errors(axes, data: Convergence) -> None:
    for name, series in sorted(data.client_mse.items()):
        axes.plot(
            series.index,
            series.to_numpy(),
            marker="o",
            markersize=4,
            linewidth=1.2,
            linestyle="--",
            label=f"{name}'s model, {data.client_mse_what}",
        )
    axes.plot(
        data.global_mse.index,
        data.global_mse.to_numpy(),
        marker="o",
        color="black",
        linewidth=2.2,
        label="global model, held-out test rows",
    )
    last_round, last_mse = data.global_mse.index[-1], data.global_mse.iloc[-1]
    axes.annotate(
        f"{last_mse:.4g}",
        (last_round, last_mse),
        xytext=(0, 8),
        textcoords="offset points",
        ha="center",
        fontsize=FONT_PT - 1,
    )
    title = "Mean squared error per round"
    if data.start_mse is not None:  # the zero model's error would flatten every other point
        title += f"\n(the starting model's, round 0: {data.start_mse:.4g}, not drawn)"
    _label(axes, title, "round", f"mean squared error [({data.target})²]", data.source)


def _draw_weights(axes, data: Convergence) -> None:
    weights = data.global_weights
    last = weights.iloc[-1].abs().sort_values(ascending=False)
    labelled = list(last.index[:LABELLED_WEIGHTS])
    for name in weights.columns:
        if name not in labelled:
            axes.plot(weights.index, weights[name], color="0.7", linewidth=0.8)
    for name in labelled:
        axes.plot(weights.index, weights[name], marker="o", markersize=3, linewidth=1.8, label=name)
    axes.axhline(0.0, color="0.4", linewidth=0.6)
    others = len(weights.columns) - len(labelled)
    title = "The global model's weights per round"
    if others:
        title += f"\n(the {len(labelled)} largest at the end named, {others} more in grey)"
    y_label = f"weight [{data.target} per unit of the feature]"
    _label(axes, title, "round (0: the starting model)", y_label, "feature (bias not shown)")


def _label(axes, title: str, x_label: str, y_label: str, legend_title: str) -> None:
    """Title, axis labels, whole-number rounds, grid and legend, the same on both panels."""
    axes.set_title(title, fontsize=FONT_PT + 1)
    axes.set_xlabel(x_label, fontsize=FONT_PT)
    axes.set_ylabel(y_label, fontsize=FONT_PT)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=FONT_PT - 1, title=legend_title, title_fontsize=FONT_PT - 2)
    axes.tick_params(labelsize=FONT_PT - 1)


def convergence(
    blocks: Sequence[Block],
    *,
    test: Dataset | None,
    metrics: pd.DataFrame | None = None,
    target: str,
) -> Convergence:
    """The figure's data for the verified BLOCKS. With the server's METRICS (read_metrics), the
    clients' errors are their own rows' and the global model's the server's test MSE; without,
    every model is scored on TEST's rows (in the chain's column order). TEST may be None only
    when METRICS hold the test MSE."""
    last = last_round(blocks)
    weights = global_rounds(blocks).set_index("round")[list(blocks[0].feature_names)]
    scored = None if test is None else errors_on(blocks, test)
    if metrics is not None:
        by_round = metrics.groupby("round")
        global_mse = by_round["test_mse"].first()
        if global_mse.isna().any():
            if scored is None:
                raise ValueError("the metrics hold no test MSE: give the held-out rows")
            global_mse = None
        clients = {
            name: rows.set_index("round")["local_mse_after"].sort_index()
            for name, rows in metrics.groupby("client")
        }
        what, source = "its own rows", "from the server's metrics"
    else:
        if scored is None:
            raise ValueError("without metrics, the held-out rows are needed")
        global_mse = None
        clients = {
            name: rows.set_index("round")["mse"].sort_index()
            for name, rows in scored[scored["model"].notna()].groupby("model")
        }
        what, source = "held-out test rows", "computed from the chain"
    if global_mse is None:
        glob = scored[scored["model"].isna()]
        global_mse = glob.set_index("round")["mse"].sort_index()
    start = None if scored is None else scored[scored["model"].isna()]["mse"].iloc[0]
    return Convergence(
        global_mse=global_mse.loc[1:last],
        start_mse=start,
        client_mse=clients,
        client_mse_what=what,
        global_weights=weights,
        target=target,
        genesis_hash=blocks[0].hash,
        source=source,
    )
