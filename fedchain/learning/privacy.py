"""Record-level differential privacy for one client: its rows' sums released once, with noise.

Before the first round the client clips every value to the run's public bounds (schema.py),
maps each row to z = [x scaled to [-1, 1], 1, y likewise] / sqrt(d + 2), so every |z_i| is at
most 1 / sqrt(d + 2), and releases the upper triangle of the sums ZᵀZ with Gaussian noise
(sufficient-statistics perturbation). Adding or removing one row moves that triangle by z·zᵀ's,
whose L2 norm is sqrt((|z|⁴ + Σ z_i⁴) / 2) <= sqrt((1 + 1 / (d + 2)) / 2): the sensitivity the
noise is calibrated to. Every local search, gradient and probe answer after that is computed
from the noisy sums alone, so they are post-processing and the guarantee does not grow with the
rounds.

A noisy Gram matrix need not be positive definite, and a least-squares fit on one that is barely
so is wild. As AdaSSP does (Wang 2018, "Revisiting differentially private linear regression"),
the client also releases a noisy lower bound on the smallest eigenvalue of its sums and adds a
ridge just large enough to cover the noise: none when the rows are many. That second Gaussian is
paid from the same budget; the two compose to one Gaussian mechanism, whose noise dp-accounting
calibrates exactly (Balle and Wang 2018, the analytic Gaussian mechanism).
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from fedchain.learning.moments import Moments

MECHANISM = "gaussian-ssp"  # the name recorded for this mechanism
MECHANISMS = (MECHANISM,)  # those a verifier knows
DEFAULT_DELTA = 1e-5
MIN_EPSILON, MAX_EPSILON = 0.01, 100.0
MAX_DELTA = 0.1
# The share of the budget (in the composed Gaussian's 1/sigma², which adds up) spent on the
# smallest eigenvalue: it needs far less precision than the sums themselves.
RIDGE_SHARE = 0.05
RIDGE_FAILURE = 0.05  # the chance that the ridge chosen does not cover the noise (then see below)


@dataclass(frozen=True)
class Guarantee:
    """(ε, δ)-differential privacy for each row of a client's data, add/remove neighbours."""

    epsilon: float
    delta: float
    mechanism: str = MECHANISM

    def __post_init__(self) -> None:
        check_budget(self.epsilon, self.delta)


@dataclass(frozen=True, eq=False)
class PrivateRelease:
    """What a private client trains on, and what it may say about it."""

    moments: Moments  # the noisy sums with the ridge, in data units
    n_samples: int  # the noisy count of rows (an exact count would itself tell a row apart)
    ridge: float  # added to the diagonal of the features' and intercept's scaled sums
    clipped: int  # values the bounds cut: known to the client alone (the count is not private)
    guarantee: Guarantee


def check_budget(epsilon: float, delta: float) -> None:
    """Raise ValueError unless EPSILON and DELTA are a budget this mechanism can meet."""
    if not (isinstance(epsilon, float) and MIN_EPSILON <= epsilon <= MAX_EPSILON):
        raise ValueError(
            f"ε must be a number in [{MIN_EPSILON:g}, {MAX_EPSILON:g}], not {epsilon!r}"
        )
    if not (isinstance(delta, float) and 0.0 < delta <= MAX_DELTA):
        raise ValueError(f"δ must be a number in (0, {MAX_DELTA:g}], not {delta!r}")


@functools.cache  # a root search: the same budget gives the same noise
def noise_multiplier(epsilon: float, delta: float) -> float:
    """The smallest noise, in units of the sensitivity, for which one Gaussian release is
    (ε, δ)-DP."""
    check_budget(epsilon, delta)
    # Imported here: it brings SciPy's statistics, a second's start-up no other program needs.
    from dp_accounting import gaussian_mechanism

    return float(gaussian_mechanism.get_sigma_gaussian(epsilon, delta))


def sensitivities(n_features: int) -> tuple[float, float]:
    """How far one row can move the released triangle of sums (L2) and the smallest eigenvalue
    of the features' and intercept's sums."""
    p = n_features + 2
    return math.sqrt((1.0 + 1.0 / p) / 2.0), (p - 1) / p


def noise_scales(epsilon: float, delta: float, n_features: int) -> tuple[float, float]:
    """The standard deviations of the noise on the sums and on the smallest eigenvalue."""
    # Gaussian releases compose to one whose (sensitivity / noise)² is the sum of theirs (their
    # privacy losses are Gaussian and add): RIDGE_SHARE of it for the eigenvalue.
    unit = noise_multiplier(epsilon, delta)
    sums, floor = sensitivities(n_features)
    return sums * unit / math.sqrt(1.0 - RIDGE_SHARE), floor * unit / math.sqrt(RIDGE_SHARE)


def scaled_rows(
    X: np.ndarray, y: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, int]:
    """Each row as z = [x, 1, y] clipped to LOW..HIGH, scaled to [-1, 1], over sqrt(d + 2), so
    that |z| <= 1; and how many values the bounds cut."""
    values = np.column_stack([X, y]).astype(np.float64)
    clipped = np.clip(values, low, high)
    cut = int(np.count_nonzero(clipped != values))
    scaled = (2.0 * clipped - (low + high)) / (high - low)
    d = X.shape[1]
    rows = np.column_stack([scaled[:, :d], np.ones(len(y)), scaled[:, d]])
    return rows / math.sqrt(d + 2), cut


def release(
    X: np.ndarray,
    y: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    *,
    epsilon: float,
    delta: float = DEFAULT_DELTA,
    rng: np.random.Generator,
    adaptive_ridge: bool = True,
) -> PrivateRelease:
    """Release the rows' sums with (EPSILON, DELTA)-DP, clipping to the public bounds LOW and
    HIGH (the features', then the target's). RNG must be secret: whoever knows it can take the
    noise out. ADAPTIVE_RIDGE False gives the textbook perturbation, to compare against: the
    whole budget on the sums, for a sensitivity of 1, and only the ridge that makes them positive
    definite."""
    if not len(y):
        raise ValueError("a private release needs at least one row")
    Z, cut = scaled_rows(X, y, low, high)
    d = X.shape[1]
    q = d + 1  # the features and the intercept: what the fit inverts
    gram = Z.T @ Z
    if adaptive_ridge:
        sigma_sums, sigma_floor = noise_scales(epsilon, delta, d)
        # AdaSSP: a private, high-probability lower bound on the smallest eigenvalue, and a
        # ridge that tops it up to what the noise may take away: the spectral norm of a
        # symmetric Gaussian matrix, about sigma (2 sqrt(q) + t).
        tail = math.sqrt(2.0 * math.log(1.0 / RIDGE_FAILURE))
        smallest = float(np.linalg.eigvalsh(gram[:q, :q])[0])
        floor = max(smallest + sigma_floor * (rng.standard_normal() - tail), 0.0)
        ridge = max(sigma_sums * (2.0 * math.sqrt(q) + tail) - floor, 0.0)
    else:
        sigma_sums, ridge = noise_multiplier(epsilon, delta), 0.0  # for |z|² <= 1, as usual
    noise = np.triu(rng.normal(0.0, sigma_sums, size=gram.shape))
    noisy = gram + noise + np.triu(noise, 1).T
    count = noisy[d, d] * (d + 2)
    noisy[:q, :q] += ridge * np.eye(q)
    # Post-processing, so free: should the ridge still fall short (a RIDGE_FAILURE draw), raise
    # it until the sums are positive definite by a margin of the noise's own size.
    shortfall = sigma_sums - float(np.linalg.eigvalsh(noisy[:q, :q])[0])
    if shortfall > 0:
        noisy[:q, :q] += shortfall * np.eye(q)
        ridge += shortfall
    # Post-processing too: noise on yᵀy can leave it below what the best fit explains, and every
    # MSE the client reports would then read below zero. It moves no fit and no gradient.
    explained = float(noisy[:q, q] @ np.linalg.solve(noisy[:q, :q], noisy[:q, q]))
    noisy[q, q] = max(noisy[q, q], explained)
    T = scaling(low, high)
    return PrivateRelease(
        moments=Moments(T @ noisy @ T.T),
        n_samples=max(1, round(count)),
        ridge=ridge,
        clipped=cut,
        guarantee=Guarantee(epsilon, delta),
    )


def scaling(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """T such that [x, 1, y] = T z for every row: the sums in data units are T (ZᵀZ) Tᵀ."""
    d = low.size - 1
    middle, half = (low + high) / 2.0, (high - low) / 2.0
    # x = sqrt(d + 2) (half · z_x + middle · z_1), 1 = sqrt(d + 2) z_1, y likewise.
    T = np.zeros((d + 2, d + 2))
    T[:d, :d] = np.diag(half[:d])
    T[:d, d] = middle[:d]
    T[d, d] = 1.0
    T[d + 1, d] = middle[d]
    T[d + 1, d + 1] = half[d]
    return T * math.sqrt(d + 2)
