"""The convergence figure: the error per round of the global model and of each client's, and
each weight's path over the rounds. Drawn on matplotlib's Agg canvas, so it needs no display."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator

from fedchain.learning.dataset import Dataset
from fedchain.learning.linear_model import fit_lstsq, mse
from fedchain.ledger.block import Block
from fedchain.results.history import errors_on, global_rounds, last_round

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 5.0, 100  # 1200 x 500 pixels: legible at 100 %
LABELLED_WEIGHTS = 5  # the largest few per standard deviation at the end; the rest thin and grey
FONT_PT = 11
# What the bundled data's one-hot columns mean (README, "The data"): each against the category
# left out, so a weight is the difference from a woman with no children in the northeast.
FEATURE_MEANINGS = {
    "OHE_male": "male",
    "OHE_1": "1 child",
    **{f"OHE_{n}": f"{n} children" for n in range(2, 6)},
    "OHE_yes": "smoker",
    "OHE_northwest": "northwest",
    "OHE_southeast": "southeast",
    "OHE_southwest": "southwest",
}
BASELINE_NOTE = (
    "OHE_1…OHE_5: number of children (vs none); OHE_yes: smoker;\n"
    "OHE_male: male (vs female); OHE_northwest etc.: region (vs northeast)"
)


# A panel, the round its lines end at, and each line's name, last value and colour.
LineEnds = tuple[Axes, float, dict[str, tuple[float, str]]]


@dataclass(frozen=True)
class Reference:
    """Ordinary least squares fitted on every client's rows pooled: the best any linear model
    can do on those rows, and what the federation avoids by not pooling them."""

    pooled_mse: float  # on the pooled rows it was fitted on
    test_mse: float | None  # on the held-out rows, when they are given
    global_pooled_mse: pd.Series  # by round from 0: the global model's MSE on the pooled rows
    n_rows: int


@dataclass(frozen=True)
class Convergence:
    """What the figure shows, computed from a verified chain (and the server's metrics)."""

    global_mse: pd.Series  # by round from 1: the global model's MSE on the held-out rows
    start_mse: float | None  # the starting model's (round 0), when the held-out rows are given
    client_mse: dict[str, pd.Series]  # each client's, by round
    client_mse_what: str  # what the clients' MSE is measured on, for the legend
    global_weights: pd.DataFrame  # one row per round (the index), a column per feature
    target: str
    genesis_hash: str
    source: str  # where the errors came from, for the caption
    reference: Reference | None = None
    feature_sd: pd.Series | None = None  # each feature's standard deviation on held-out rows
    unit: str = ""  # the target's, as the chain records it ("": not said)


def draw_convergence(data: Convergence, path: str | Path | BinaryIO) -> None:
    """Write the figure to PATH (or a binary file) as a PNG of WIDTH_IN x HEIGHT_IN inches at
    DPI."""
    convergence_figure(data).savefig(path, format="png", dpi=DPI)


def convergence_figure(data: Convergence) -> Figure:
    """The figure, on an Agg canvas: the global model's error over the pooled least-squares
    reference, the clients' errors in a panel of their own, and the standardised weights."""
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subfigures(1, 2, width_ratios=[1, 1.15])
    errors, clients = left.subplots(2, 1, sharex=True, height_ratios=[1.7, 1])
    weights = right.subplots()
    ends = [_draw_global(errors, data), _draw_weights(weights, data)]
    _draw_clients(clients, data)
    figure.suptitle(
        f"Federated training recorded on chain {data.genesis_hash[:12]}…: "
        f"convergence over {int(data.global_weights.index.max())} rounds"
        + plain_text(f"; {data.target} is in {data.unit}" if data.unit else ""),
        fontsize=FONT_PT + 2,
    )
    figure.canvas.draw()  # lays the panels out: line ends then land where they will be drawn
    for axes, x, names in filter(None, ends):
        _label_line_ends(axes, x, names)
    return figure


def plain_text(text: str) -> str:
    """TEXT as matplotlib draws it letter for letter: it reads what lies between two $ as
    mathtext, and a chain's names and unit are anyone's text ('$\\frac{$' stopped the draw)."""
    return text.replace("$", r"\$")


def global_errors(data: Convergence) -> pd.Series:
    """The global model's MSE on the held-out rows by round, round 0 first when it is known."""
    if data.start_mse is None:
        return data.global_mse
    start = pd.Series([data.start_mse], index=[0])
    return pd.concat([start, data.global_mse.loc[1:]])


def excess_over_reference(data: Convergence) -> dict[str, pd.Series]:
    """The global model's MSE over the pooled least-squares model's, minus 1, by round: on the
    pooled rows (never below 0: least squares is their optimum) and on the held-out rows (where
    it may be, by chance)."""
    ref = data.reference
    if ref is None:
        return {}
    excess = {"pooled client rows": ref.global_pooled_mse / ref.pooled_mse - 1.0}
    if ref.test_mse is not None:
        excess["held-out test rows"] = global_errors(data) / ref.test_mse - 1.0
    return excess


def standardised_weights(data: Convergence) -> pd.DataFrame:
    """Each weight times its feature's standard deviation on the held-out rows: the change in
    the target per standard deviation, comparable across features. Raw weights without them."""
    if data.feature_sd is None:
        return data.global_weights
    return data.global_weights * data.feature_sd[data.global_weights.columns]


def labelled_weights(data: Convergence) -> list[str]:
    """The features named on the figure: the largest at the last round, standardised."""
    last = standardised_weights(data).iloc[-1].abs().sort_values(ascending=False, kind="stable")
    return list(last.index[:LABELLED_WEIGHTS])


def _draw_global(axes, data: Convergence) -> LineEnds | None:
    excess = excess_over_reference(data)
    if not excess:
        _draw_global_alone(axes, data)
        return None
    styles = {"pooled client rows": ("black", "-"), "held-out test rows": ("tab:blue", "--")}
    ends = {}
    for rows, series in excess.items():
        color, style = styles[rows]
        axes.plot(
            series.index,
            series.to_numpy(),
            color=color,
            linestyle=style,
            marker="o",
            markersize=4,
            linewidth=1.8,
            label=f"global model, {rows}",
        )
        ends[f"{rows.split()[0]} rows {series.iloc[-1]:+.1e}"] = (float(series.iloc[-1]), color)
    ref = data.reference
    axes.axhline(0.0, color="tab:red", linewidth=1.2, label="pooled least squares")
    ends["pooled lstsq"] = (0.0, "tab:red")
    values = pd.concat(list(excess.values()))
    smallest = values.abs()[values != 0].min() if (values != 0).any() else 1e-6
    linthresh = 10.0 ** math.floor(math.log10(smallest))
    axes.set_yscale("symlog", linthresh=linthresh, linscale=0.4)
    axes.yaxis.set_major_locator(FixedLocator(_symlog_ticks(values, linthresh)))
    axes.set_ylim(min(values.min(), 0.0) * 3 - linthresh, values.max() * 3 + linthresh)
    shown = f"{ref.pooled_mse:.4f} on its {ref.n_rows} rows"
    if ref.test_mse is not None:
        shown += f", {ref.test_mse:.4f} held-out"
    axes.set_title(
        f"Global model against least squares on the pooled rows\n(lstsq MSE {shown})",
        fontsize=FONT_PT - 1,
    )
    axes.set_ylabel("MSE / lstsq's MSE - 1", fontsize=FONT_PT - 1)
    _tidy(axes)
    return axes, int(values.index.max()), ends


def _symlog_ticks(values: pd.Series, linthresh: float) -> list[float]:
    """Zero and every other power of ten from 10 LINTHRESH out to the VALUES, either side."""
    ticks = [0.0]
    for sign, reach in ((1.0, values.max()), (-1.0, -values.min())):
        tick = linthresh * 10  # not linthresh itself: it would crowd the zero
        while reach > 0 and tick <= reach * 10:
            ticks.append(sign * tick)
            tick *= 100.0
    return sorted(ticks)


def _draw_global_alone(axes, data: Convergence) -> None:
    series = global_errors(data)
    axes.plot(
        series.index,
        series.to_numpy(),
        color="black",
        marker="o",
        markersize=4,
        linewidth=1.8,
        label="global model, held-out test rows",
    )
    axes.annotate(
        f"{series.iloc[-1]:.4g}",
        (series.index[-1], series.iloc[-1]),
        xytext=(0, 6),
        textcoords="offset points",
        ha="center",
        fontsize=FONT_PT - 2,
    )
    axes.set_yscale("log")
    axes.set_title(
        "Global model's MSE on held-out rows\n(no pooled least-squares reference "
        "given: absolute MSE, log scale)",
        fontsize=FONT_PT,
    )
    axes.set_ylabel(plain_text(f"MSE [({data.target})²]"), fontsize=FONT_PT - 1)
    _tidy(axes)


def _draw_clients(axes, data: Convergence) -> None:
    for name, series in sorted(data.client_mse.items()):
        axes.plot(
            series.index,
            series.to_numpy(),
            marker="o",
            markersize=3,
            linewidth=1.2,
            linestyle="--",
            label=plain_text(name),
        )
    axes.set_title(
        f"Each client's model on {data.client_mse_what} ({data.source})", fontsize=FONT_PT - 1
    )
    axes.set_xlabel("round (0: the starting model)", fontsize=FONT_PT - 1)
    axes.set_ylabel("MSE", fontsize=FONT_PT - 1)
    axes.legend(fontsize=FONT_PT - 3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _tidy(axes)


def _draw_weights(axes, data: Convergence) -> LineEnds:
    weights = standardised_weights(data)
    labelled = labelled_weights(data)
    for name in weights.columns:
        if name not in labelled:
            axes.plot(weights.index, weights[name], color="0.75", linewidth=0.8)
    ends = {}
    for name in labelled:
        (line,) = axes.plot(weights.index, weights[name], marker="o", markersize=3, linewidth=1.8)
        ends[name] = (float(weights[name].iloc[-1]), line.get_color())
    axes.axhline(0.0, color="0.4", linewidth=0.6)
    others = len(weights.columns) - len(labelled)
    if data.feature_sd is None:
        title = "The global model's weights per round (per unit: no held-out rows to scale by)"
        y_label = f"weight [{data.target} per unit of the feature]"
    else:
        title = "The global model's weights per round, per standard deviation"
        y_label = f"weight x the feature's SD on held-out rows [{data.target}]"
    if others:
        title += f"\n(the {len(labelled)} largest named, {others} more in grey; bias not shown)"
    axes.set_title(title, fontsize=FONT_PT)
    axes.set_xlabel("round (0: the starting model)", fontsize=FONT_PT - 1)
    axes.set_ylabel(plain_text(y_label), fontsize=FONT_PT - 1)
    if any(name in FEATURE_MEANINGS for name in weights.columns):
        axes.text(
            0.0,
            -0.13,
            BASELINE_NOTE,
            transform=axes.transAxes,
            fontsize=FONT_PT - 3,
            va="top",
            color="0.25",
        )
    _tidy(axes)
    return axes, weights.index[-1], ends


def _label_line_ends(axes, x: float, ends: dict[str, tuple[float, str]]) -> None:
    """Name each line at its end (names are features, else shown as given), nudged apart in
    points so no two names overlap on any scale."""
    to_pixels = axes.transData.transform
    ys = {name: to_pixels((x, y))[1] for name, (y, _) in ends.items()}
    order = sorted(ends, key=ys.get)
    gap = (FONT_PT + 1) * axes.figure.dpi / 72
    for name, at in zip(order, spread([ys[name] for name in order], gap), strict=True):
        y, color = ends[name]
        meaning = FEATURE_MEANINGS.get(name)
        axes.annotate(
            plain_text(name if meaning is None else f"{meaning} ({name})"),
            (x, y),
            xytext=(6, (at - ys[name]) * 72 / axes.figure.dpi),
            textcoords="offset points",
            color=color,
            fontsize=FONT_PT - 2,
            va="center",
            annotation_clip=False,
        )


def spread(targets: Sequence[float], gap: float) -> list[float]:
    """Positions as near the ascending TARGETS as they can be with GAP between neighbours:
    names that would overlap are set GAP apart, centred on where they belong."""
    clusters = [[t] for t in targets]
    merged = True
    while merged:
        merged = False
        for i in range(len(clusters) - 1):
            if _placed(clusters[i + 1], gap)[0] - _placed(clusters[i], gap)[-1] < gap:
                clusters[i : i + 2] = [clusters[i] + clusters[i + 1]]
                merged = True
                break
    return [at for cluster in clusters for at in _placed(cluster, gap)]


def _placed(cluster: list[float], gap: float) -> list[float]:
    centre = sum(cluster) / len(cluster)
    return [centre + (i - (len(cluster) - 1) / 2) * gap for i in range(len(cluster))]


def _tidy(axes) -> None:
    """Whole-number rounds, a light grid and the same tick size on every panel."""
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(True, alpha=0.3)
    axes.tick_params(labelsize=FONT_PT - 2)


def convergence(
    blocks: Sequence[Block],
    *,
    test: Dataset | None,
    metrics: pd.DataFrame | None = None,
    pooled: Dataset | None = None,
    target: str,
) -> Convergence:
    """The figure's data for the verified BLOCKS. With the server's METRICS (read_metrics), the
    clients' errors are their own rows' and the global model's the server's test MSE; without,
    every model is scored on TEST's rows (in the chain's column order). TEST may be None only
    when METRICS hold the test MSE. With the clients' rows POOLED (in the chain's column order),
    the global model is measured against least squares fitted on them."""
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
        reference=None if pooled is None else _reference(blocks, pooled, test),
        feature_sd=None if test is None else pd.Series(test.X.std(axis=0), test.feature_names),
        unit=blocks[0].run.target.unit if blocks[0].targeted else "",
    )


def _reference(blocks: Sequence[Block], pooled: Dataset, test: Dataset | None) -> Reference:
    central = fit_lstsq(pooled.X, pooled.y)
    scored = errors_on(blocks, pooled)
    return Reference(
        pooled_mse=mse(central, pooled.X, pooled.y),
        test_mse=None if test is None else mse(central, test.X, test.y),
        global_pooled_mse=scored[scored["model"].isna()].set_index("round")["mse"].sort_index(),
        n_rows=pooled.n_samples,
    )
