"""Aggregation rules: how the server turns the clients' models into the next global model.

FedAvg, and rules robust to a few poisoned updates: the coordinate-wise median and trimmed mean,
and multi-Krum. Each is a pure function of the updates in a fixed order, with a fixed order of
float additions, so the server and every verifier get the same bits. RULES holds every rule, with
what it takes, needs and records and how a person writes it, and the rest of the program asks it
what a rule needs and how to word it, rather than comparing names.
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedchain.checks import MAX_MAGNITUDE
from fedchain.learning.linear_model import LinearModel


def fedavg(updates: Sequence[tuple[LinearModel, int]]) -> LinearModel:
    """Average models weighted by their sample counts, summed in the order given."""
    # Federated averaging (McMahan et al. 2017, "Communication-Efficient Learning of Deep
    # Networks from Decentralized Data"): weighting by n_samples makes the average what a
    # single model trained on the pooled rows would lean towards. The explicit loop fixes the
    # order of the float additions, so the server and every verifier get the same bits.
    if not updates:
        raise ValueError("fedavg needs at least one client model")
    n_features = updates[0][0].n_features
    total = 0
    weight_sum = np.zeros(n_features)
    bias_sum = 0.0
    with np.errstate(over="ignore"):  # overflow is checked once, below, with a clear message
        for model, n_samples in updates:
            if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
                raise TypeError(f"a sample count must be an integer, not {n_samples!r}")
            if n_samples <= 0:
                raise ValueError(f"a sample count must be positive, not {n_samples}")
            if model.n_features != n_features:
                raise ValueError(
                    f"models differ in feature count ({model.n_features} != {n_features})"
                )
            total += int(n_samples)
            weight_sum = weight_sum + float(n_samples) * model.weights
            bias_sum = bias_sum + float(n_samples) * model.bias
    if not (np.all(np.isfinite(weight_sum)) and np.isfinite(bias_sum)):
        raise ValueError("the client models are too large to average in float64 (overflow)")
    return LinearModel(weight_sum / float(total), bias_sum / float(total))


FEDAVG, MEDIAN, TRIMMED_MEAN, KRUM = "fedavg", "median", "trimmed-mean", "krum"
SCAFFOLD = "scaffold"  # drift-corrected: see learning/scaffold.py, which aggregates it
BYZANTINE = "byzantine"  # the parameter that says how many attackers a robust rule assumes
MAX_BYZANTINE = 1000
PROXIMAL = "proximal"  # scaffold's parameter: the clients' proximal weight, standardised units
# Below MIN_PROXIMAL a client's step along a direction its rows cannot see has no bound worth
# the name (1e-12 gave steps of 1e12); above MAX_PROXIMAL no client moves.
MIN_PROXIMAL, MAX_PROXIMAL = 1e-6, 1e6


def feature_scale(X: np.ndarray) -> tuple[float, ...]:
    """Each column's root mean square over the rows X (1 for a column of zeros): what Krum
    multiplies each weight by, so its distances mean a change of prediction on such rows."""
    scale = np.sqrt(np.mean(np.square(X), axis=0))
    scale[scale == 0.0] = 1.0  # nothing to measure it by: raw units, as without a scale
    return tuple(map(float, scale))


def check_scale(scale: object, n_features: int) -> None:
    """Raise ValueError unless SCALE is a tuple of N_FEATURES positive floats at most
    MAX_MAGNITUDE."""
    if not isinstance(scale, tuple) or len(scale) != n_features:
        raise ValueError(
            f"a feature scale must hold one number for each of the {n_features} features"
        )
    for value in scale:
        if type(value) is not float or not 0.0 < value <= MAX_MAGNITUDE:
            raise ValueError(
                f"a feature scale holds positive numbers of at most "
                f"{MAX_MAGNITUDE:g}, not {value!r}"
            )


@dataclass(frozen=True)
class Aggregate:
    """A rule's global model and what it chose: per client, in the order given, a vector of
    numbers the rule defines (see each rule), so a verifier can recompute and compare both."""

    model: LinearModel
    choice: dict[str, tuple[float, ...]]


def check_byzantine(f: object) -> None:
    """Raise ValueError unless F, the attackers a robust rule assumes, is a whole number in
    range."""
    if not (isinstance(f, float) and f.is_integer() and 0 <= f <= MAX_BYZANTINE):
        raise ValueError(f"byzantine must be a whole number 0..{MAX_BYZANTINE}, not {f!r}")


def check_proximal(mu: object) -> None:
    """Raise ValueError unless MU, scaffold's proximal weight, is a number in range."""
    if not (isinstance(mu, float) and MIN_PROXIMAL <= mu <= MAX_PROXIMAL):
        raise ValueError(
            f"proximal must be a number in [{MIN_PROXIMAL:g}, {MAX_PROXIMAL:g}], not {mu!r}"
        )


PARAMETER_CHECKS = {BYZANTINE: check_byzantine, PROXIMAL: check_proximal}

Updates = Sequence[tuple[str, LinearModel, int]]
# A rule's pure aggregate: the named, counted updates, the attackers f it assumes, each feature's
# scale (None: raw units) and whether Krum averages by row counts (format-3 chains did).
Combine = Callable[[Updates, int, Sequence[float] | None, bool], Aggregate]


@dataclass(frozen=True)
class Rule:
    """An aggregation rule: the parameters it takes, the clients it needs, what a run of it
    asks of the clients and records on the chain, and how it aggregates."""

    name: str  # as --aggregation and the chain write it
    parameters: tuple[str, ...]  # exactly these, each checked by PARAMETER_CHECKS
    format: int  # the public chain format a run is written in (ledger/block.py has the twins)
    combine: Combine | None  # None: the server's step settles it (learning/scaffold.py)
    needed: Callable[[int], int] = lambda f: 1  # the fewest clients, given f attackers
    probes: bool = False  # asks the clients for their gradients at candidate models
    scaled: bool = False  # measures in each feature's scale, which the genesis records
    title: str = ""  # how a person writes the rule's name in a sentence; the name if empty
    # What its choice says of each client: whether it kept the whole model (with a score, as
    # Krum), or else each value's side; and whether a person wants the values it used (a
    # median uses few) rather than those it trimmed.
    keeps_clients: bool = False
    counts_used_values: bool = False

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.name)

    @property
    def robust(self) -> bool:
        """Whether it assumes some attackers (--byzantine)."""
        return BYZANTINE in self.parameters

    def check_parameters(self, parameters: Mapping[str, float]) -> None:
        """Raise ValueError unless PARAMETERS are exactly what the rule takes, in range."""
        if set(parameters) != set(self.parameters):
            wanted = ", ".join(sorted(self.parameters)) or "none"
            raise ValueError(
                f"{self.name} takes the parameters {wanted}, not {', '.join(parameters)}"
            )
        for name, value in parameters.items():
            PARAMETER_CHECKS[name](value)

    def clients_needed(self, parameters: Mapping[str, float]) -> int:
        """The fewest clients a round with PARAMETERS can be aggregated from."""
        self.check_parameters(parameters)
        return self.needed(int(parameters.get(BYZANTINE, 0)))

    def aggregate(
        self,
        parameters: Mapping[str, float],
        updates: Updates,
        *,
        scale: Sequence[float] | None = None,
        kept_by_rows: bool = False,
    ) -> Aggregate:
        """Apply the rule to the named, counted client models UPDATES, in the order given."""
        needed = self.clients_needed(parameters)
        if len(updates) < needed:
            raise ValueError(
                f"{self.name} with {parameters} needs at least {needed} clients, not {len(updates)}"
            )
        if self.combine is None:
            raise ValueError(
                f"{self.name} needs the clients' gradients: learning/scaffold.py settles it"
            )
        return self.combine(updates, int(parameters.get(BYZANTINE, 0)), scale, kept_by_rows)


def _fedavg(updates: Updates, f: int, scale: object, kept_by_rows: bool) -> Aggregate:
    return Aggregate(fedavg([(model, n) for _, model, n in updates]), {})


def _median(updates: Updates, f: int, scale: object, kept_by_rows: bool) -> Aggregate:
    return _trimmed(updates, (len(updates) - 1) // 2)


def _trimmed_mean(updates: Updates, f: int, scale: object, kept_by_rows: bool) -> Aggregate:
    return _trimmed(updates, f)


def _krum(updates: Updates, f: int, scale: Sequence[float] | None, kept_by_rows: bool) -> Aggregate:
    return multi_krum(updates, f, scale=scale, kept_by_rows=kept_by_rows)


def _trimmed(updates: Updates, trim: int) -> Aggregate:
    """The trimmed mean's Aggregate: the choice is each client's side per coordinate."""
    model, sides = trimmed_mean([model for _, model, _ in updates], trim)
    return Aggregate(
        model,
        {name: tuple(map(float, side)) for (name, _, _), side in zip(updates, sides, strict=True)},
    )


# Krum scores a client by its n - f - 2 nearest others, and Blanchard et al. need n > 2f + 2 for
# that score to outvote f attackers; a trimmed mean or a median needs a majority of honest
# values in every coordinate. The formats are ledger/block.py's: FedAvg keeps format 2, the
# other rules record their parameters and choices (3), scaffold its gradients and step (4),
# Krum its feature scale (5).
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(FEDAVG, (), format=2, combine=_fedavg, title="FedAvg"),
        Rule(
            MEDIAN,
            (BYZANTINE,),
            format=3,
            combine=_median,
            needed=lambda f: 2 * f + 1,
            counts_used_values=True,
        ),
        Rule(
            TRIMMED_MEAN,
            (BYZANTINE,),
            format=3,
            combine=_trimmed_mean,
            needed=lambda f: 2 * f + 1,
            title="trimmed mean",
        ),
        Rule(
            KRUM,
            (BYZANTINE,),
            format=5,
            combine=_krum,
            needed=lambda f: 2 * f + 3,
            scaled=True,
            title="Krum",
            keeps_clients=True,
        ),
        # The docs write the project's rule "scaffold": it borrows SCAFFOLD's correction but
        # takes its own step (learning/scaffold.py).
        Rule(SCAFFOLD, (PROXIMAL,), format=4, combine=None, probes=True),
    )
}
KNOWN_RULES = tuple(RULES)
ROBUST_RULES = tuple(name for name, rule in RULES.items() if rule.robust)


def rule_named(name: str) -> Rule:
    """The rule called NAME; ValueError if there is none."""
    if name not in RULES:
        raise ValueError(f"unknown aggregation rule {name!r}")
    return RULES[name]


def clients_needed(rule: str, parameters: Mapping[str, float]) -> int:
    """The fewest clients a round of RULE with PARAMETERS can be aggregated from."""
    return rule_named(rule).clients_needed(parameters)


def check_parameters(rule: str, parameters: Mapping[str, float]) -> None:
    """Raise ValueError unless PARAMETERS are exactly what RULE takes, in range."""
    rule_named(rule).check_parameters(parameters)


def aggregate(
    rule: str,
    parameters: Mapping[str, float],
    updates: Updates,
    *,
    scale: Sequence[float] | None = None,
    kept_by_rows: bool = False,
) -> Aggregate:
    """Apply RULE to the named, counted client models UPDATES, in the order given; Krum
    measures distance with each weight times its feature's SCALE (None: raw units), and
    averages what it keeps by row counts only if KEPT_BY_ROWS (as format-3 chains did)."""
    return rule_named(rule).aggregate(parameters, updates, scale=scale, kept_by_rows=kept_by_rows)


def trimmed_mean(models: Sequence[LinearModel], trim: int) -> tuple[LinearModel, np.ndarray]:
    """Drop the TRIM lowest and highest values of every coordinate (weights, then bias) and
    average the rest; also return each model's side per coordinate: -1 dropped low, +1 dropped
    high, 0 kept."""
    # Yin et al. 2018, "Byzantine-Robust Distributed Learning". The coordinate-wise median is
    # the same with (n - 1) // 2 dropped each side: the middle value, or the mean of the two.
    # Equal values are ranked by the models' order (a stable sort), so every verifier trims
    # the same clients; the kept values are summed in rank order, one coordinate at a time.
    values = _stacked(models)
    n = len(models)
    if not 0 <= 2 * trim < n:
        raise ValueError(f"cannot drop {trim} of {n} values at each end")
    ranks = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, ranks, axis=0)
    total = np.zeros(values.shape[1])
    with np.errstate(over="ignore"):
        for row in ordered[trim : n - trim]:
            total = total + row
    if not np.all(np.isfinite(total)):
        raise ValueError("the client models are too large to average in float64 (overflow)")
    mean = total / float(n - 2 * trim)
    sides = np.zeros(values.shape)
    columns = np.arange(values.shape[1])
    for position in range(n):
        side = -1.0 if position < trim else 1.0 if position >= n - trim else 0.0
        sides[ranks[position], columns] = side
    return LinearModel(mean[:-1], float(mean[-1])), sides


def multi_krum(
    updates: Sequence[tuple[str, LinearModel, int]],
    f: int,
    *,
    scale: Sequence[float] | None = None,
    kept_by_rows: bool = False,
) -> Aggregate:
    """Score each model by its squared distances to its n - f - 2 nearest others, keep the n - f
    best-scored and average them with equal weights (by row counts if KEPT_BY_ROWS); the choice
    is each client's (score, 1 if kept else 0). SCALE: see scaled; None, raw units."""
    # Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    # Descent" (Krum, and multi-Krum averaging the m best with equal weights: a row count is
    # the client's word, and weighting by it would hand an attacker the average). Distances are
    # exactly rounded sums (math.fsum), so they do not depend on summation order; ties go to
    # the earlier client.
    n = len(updates)
    if n < 2 * f + 3:
        raise ValueError(f"krum with {f} attackers needs at least {2 * f + 3} clients, not {n}")
    models = [model for _, model, _ in updates]
    values = _stacked(models) if scale is None else scaled(models, scale)
    distances = np.zeros((n, n))
    with np.errstate(over="ignore"):  # overflow is checked once, below, with a clear message
        for i in range(n):
            for j in range(i + 1, n):
                gap = values[i] - values[j]
                distances[i, j] = distances[j, i] = _exact_sum(gap * gap)
    scores = []
    for i in range(n):
        nearest = sorted(distances[i, j] for j in range(n) if j != i)[: n - f - 2]
        scores.append(_exact_sum(nearest))
    if not all(math.isfinite(s) for s in scores):
        raise ValueError("the client models are too far apart to score in float64 (overflow)")
    kept = sorted(sorted(range(n), key=lambda i: scores[i])[: n - f])
    model = fedavg([(updates[i][1], updates[i][2] if kept_by_rows else 1) for i in kept])
    choice = {name: (scores[i], float(i in kept)) for i, (name, _, _) in enumerate(updates)}
    return Aggregate(model, choice)


def scaled(models: Sequence[LinearModel], scale: Sequence[float]) -> np.ndarray:
    """The models as rows of weights then bias, each weight times its feature's SCALE."""
    # With each feature's root mean square on some rows as its scale, the squared distance
    # between two models is the sum of the mean squared change of prediction on those rows
    # that each weight's difference (and the bias's) makes on its own: the target's units,
    # whatever units each feature is in. In raw weight units a feature with small values
    # dominates, and noise on one with large values (age) changes every prediction while
    # looking close.
    values = _stacked(models)
    if len(scale) != values.shape[1] - 1:
        raise ValueError(
            f"the feature scale has {len(scale)} features, the models {values.shape[1] - 1}"
        )
    with np.errstate(over="ignore"):  # an overflow shows as an infinite score, refused after
        values[:, :-1] = values[:, :-1] * np.array(scale)
    return values


def _exact_sum(values: Iterable[float]) -> float:
    """math.fsum, infinite where the sum overflows (fsum raises instead)."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.inf


def _stacked(models: Sequence[LinearModel]) -> np.ndarray:
    """The models as rows of weights then bias."""
    if not models:
        raise ValueError("aggregation needs at least one client model")
    n_features = models[0].n_features
    if any(model.n_features != n_features for model in models):
        raise ValueError("the client models differ in feature count")
    return np.array([np.append(model.weights, model.bias) for model in models])
