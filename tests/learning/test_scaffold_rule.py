"""The server's step of the scaffold rule: from the clients' gradients at the start x and at the
FedAvg candidate c, the exact least pooled-MSE point on the line through x along c - x, or on the
plane it spans with the previous round's step, as numpy finds it on the pooled rows; never worse
than x nor c; the same bits whatever the order of the clients where the sums allow it; and what
does not fit a quadratic, or a record, is refused or takes no step."""

import math

import numpy as np
import pytest

from fedchain.learning.linear_model import LinearModel
from fedchain.learning.scaffold import (
    RECORD_KEYS,
    Contribution,
    SearchRecord,
    _weighted_mean,
    candidate,
    settle,
)


def vector(model: LinearModel) -> np.ndarray:
    return np.append(model.weights, model.bias)


def as_model(theta: np.ndarray) -> LinearModel:
    return LinearModel(theta[:-1], float(theta[-1]))


def design(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.ones((len(X), 1))])


def mse_gradient(X: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    A = design(X)
    return 2.0 * A.T @ (A @ theta - y) / len(y)


class Clients:
    """Random small quadratic clients, each with rows of its own kind (non-IID), pooled too."""

    def __init__(self, seed: int, n_clients: int = 3, n_features: int = 4) -> None:
        rng = np.random.default_rng(seed)
        self.rows = []
        for _ in range(n_clients):
            n = int(rng.integers(8, 40))
            X = rng.normal(size=(n, n_features)) * rng.uniform(0.2, 5.0, n_features)
            X += rng.normal(size=n_features) * 3.0  # each client's rows centred elsewhere
            y = X @ rng.normal(size=n_features) + rng.normal() + rng.normal(size=n)
            self.rows.append((X, y))
        self.X = np.vstack([X for X, _ in self.rows])
        self.y = np.concatenate([y for _, y in self.rows])
        self.n_parameters = n_features + 1
        self.rng = rng

    def pooled_mse(self, theta: np.ndarray) -> float:
        residual = design(self.X) @ theta - self.y
        return float(residual @ residual) / len(self.y)

    def pooled_gradient(self, theta: np.ndarray) -> np.ndarray:
        return mse_gradient(self.X, self.y, theta)

    def hessian(self) -> np.ndarray:
        A = design(self.X)
        return 2.0 * A.T @ A / len(self.y)

    def contributions(self, start: np.ndarray, models: list[np.ndarray]) -> list[Contribution]:
        """What the clients send: their models, and their exact gradients at START and at the
        FedAvg of the models."""
        unprobed = [
            Contribution(as_model(m), len(y), (), ())
            for m, (_, y) in zip(models, self.rows, strict=True)
        ]
        probe = vector(candidate(unprobed))
        return [
            Contribution(
                as_model(m),
                len(y),
                tuple(mse_gradient(X, y, start)),
                tuple(mse_gradient(X, y, probe)),
            )
            for m, (X, y) in zip(models, self.rows, strict=True)
        ]

    def random_round(self):
        """A start, and client models scattered around it."""
        start = self.rng.normal(size=self.n_parameters)
        models = [start + self.rng.normal(size=self.n_parameters) for _ in self.rows]
        return start, models, self.contributions(start, models)


def least_on(clients: Clients, start: np.ndarray, directions: list[np.ndarray]) -> np.ndarray:
    """The least pooled-MSE point of start + span(directions), by numpy lstsq on the rows."""
    A = design(clients.X)
    D = np.column_stack(directions)
    coefficients = np.linalg.lstsq(A @ D, clients.y - A @ start, rcond=None)[0]
    return start + D @ coefficients


def assert_close(got: np.ndarray, expected: np.ndarray, scale: float, rel: float = 1e-9):
    np.testing.assert_allclose(got, expected, rtol=rel, atol=rel * scale)


def exact_record(clients: Clients, step: np.ndarray) -> SearchRecord:
    """A previous round's record whose step's gradient change is exact: H·step."""
    return SearchRecord(
        (1.0, 0.0), tuple(np.zeros(step.size)), tuple(step), tuple(clients.hessian() @ step)
    )


# Against numpy on the pooled rows.


@pytest.mark.parametrize("seed", range(6))
def test_without_a_previous_step_the_new_model_is_the_least_pooled_mse_on_the_line(seed):
    clients = Clients(seed)
    start, _, contributions = clients.random_round()
    c = vector(candidate(contributions))
    new, record = settle(as_model(start), None, contributions)
    expected = least_on(clients, start, [c - start])
    scale = np.abs(expected).max()
    assert_close(vector(new), expected, scale)
    # The record: alone along d, the step taken, and the pooled gradient there.
    alpha, beta = record.coefficients
    assert beta == 0.0
    assert_close(np.array(record.step), alpha * (c - start), scale)
    assert_close(np.array(record.step), vector(new) - start, scale)
    gradient_scale = np.abs(clients.pooled_gradient(start)).max()
    assert_close(np.array(record.gradient), clients.pooled_gradient(vector(new)), gradient_scale)
    assert_close(
        np.array(record.step_change), clients.hessian() @ np.array(record.step), gradient_scale
    )
    # At the line's least point the gradient is orthogonal to the line.
    assert abs(np.dot(record.gradient, c - start)) <= 1e-9 * gradient_scale * scale


@pytest.mark.parametrize("seed", range(6))
def test_with_a_previous_step_the_new_model_is_the_least_pooled_mse_on_the_plane(seed):
    clients = Clients(100 + seed)
    start, _, contributions = clients.random_round()
    c = vector(candidate(contributions))
    previous = clients.rng.normal(size=clients.n_parameters)
    new, record = settle(as_model(start), exact_record(clients, previous), contributions)
    expected = least_on(clients, start, [c - start, previous])
    scale = np.abs(expected).max()
    assert_close(vector(new), expected, scale)
    alpha, beta = record.coefficients
    assert beta != 0.0
    assert_close(np.array(record.step), alpha * (c - start) + beta * previous, scale)
    gradient_scale = np.abs(clients.pooled_gradient(start)).max()
    assert_close(np.array(record.gradient), clients.pooled_gradient(vector(new)), gradient_scale)
    # The plane's point is at least as good as the line's.
    line = least_on(clients, start, [c - start])
    assert clients.pooled_mse(vector(new)) <= clients.pooled_mse(line) * (1 + 1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_the_new_model_is_never_worse_than_the_start_nor_the_candidate(seed):
    clients = Clients(200 + seed, n_clients=2 + seed % 4, n_features=1 + seed % 5)
    start, _, contributions = clients.random_round()
    c = vector(candidate(contributions))
    previous = None if seed % 2 else exact_record(clients, clients.rng.normal(size=start.size))
    new, _ = settle(as_model(start), previous, contributions)
    # Exact up to the last bits of rounding in the MSE itself.
    at_new = clients.pooled_mse(vector(new))
    assert at_new <= clients.pooled_mse(start) * (1 + 1e-12)
    assert at_new <= clients.pooled_mse(c) * (1 + 1e-12)


def test_a_start_at_the_pooled_optimum_stays_there():
    clients = Clients(7)
    A = design(clients.X)
    optimum = np.linalg.lstsq(A, clients.y, rcond=None)[0]
    models = [optimum + clients.rng.normal(size=optimum.size) for _ in clients.rows]
    new, record = settle(as_model(optimum), None, clients.contributions(optimum, models))
    assert_close(vector(new), optimum, np.abs(optimum).max(), rel=1e-10)
    assert abs(record.coefficients[0]) <= 1e-9


def test_a_previous_step_parallel_to_this_rounds_direction_falls_back_to_the_line():
    clients = Clients(8)
    start, _, contributions = clients.random_round()
    c = vector(candidate(contributions))
    parallel = exact_record(clients, 2.0 * (c - start))
    new, record = settle(as_model(start), parallel, contributions)
    assert record.coefficients[1] == 0.0
    assert new == settle(as_model(start), None, contributions)[0]
    assert_close(vector(new), least_on(clients, start, [c - start]), np.abs(start).max())


def test_a_previous_record_with_no_step_is_the_same_as_none():
    clients = Clients(9)
    start, _, contributions = clients.random_round()
    still = SearchRecord((0.0, 0.0), (1.0,) * start.size, (0.0,) * start.size, (1.0,) * start.size)
    assert settle(as_model(start), still, contributions) == settle(
        as_model(start), None, contributions
    )


# Order: the gradient means are exact sums, so they do not depend on the clients' order.


def hostile_gradients(rng: np.random.Generator, n_clients: int, size: int) -> list[tuple]:
    """Gradients whose weighted sums round differently in every order: huge terms that cancel,
    among small ones."""
    rows = []
    for i in range(n_clients):
        big = 1e16 * (1 if i % 2 else -1) * (1 + (i // 2) * 1e-3)
        rows.append(tuple(big + rng.normal(size=size) * 10.0 ** rng.integers(-3, 3, size)))
    return rows


def naive_mean(contributions, which):
    total = float(sum(c.n_samples for c in contributions))
    return sum(float(c.n_samples) * np.array(which(c)) for c in contributions) / total


def test_the_weighted_gradient_means_are_bit_identical_in_every_order_of_the_clients():
    rng = np.random.default_rng(10)
    gradients = hostile_gradients(rng, 6, 5)
    contributions = [
        Contribution(LinearModel.zeros(4), int(n), g, g)
        for n, g in zip(rng.integers(1, 1000, 6), gradients, strict=True)
    ]
    first = _weighted_mean(contributions, lambda c: c.gradient)
    orders = [rng.permutation(6) for _ in range(30)]
    for order in orders:
        shuffled = [contributions[i] for i in order]
        assert _weighted_mean(shuffled, lambda c: c.gradient).tobytes() == first.tobytes()
    # The data are hostile enough: a plain running sum does depend on the order here.
    naive = {
        naive_mean([contributions[i] for i in o], lambda c: c.gradient).tobytes() for o in orders
    }
    assert len(naive) > 1
    # And the exact sum is the right one: the exactly rounded mean of the rounded products.
    for j in range(5):
        exact = math.fsum(float(c.n_samples) * c.gradient[j] for c in contributions)
        assert first[j] == exact / float(sum(c.n_samples for c in contributions))


def dyadic_round(seed: int):
    """Client models of small dyadic numbers, so FedAvg's running sums are exact too, and
    gradients that would round by the order of their sums."""
    rng = np.random.default_rng(seed)
    start = rng.integers(-8, 8, 5) / 4.0
    contributions = []
    gradients = hostile_gradients(rng, 5, 5)
    for i in range(5):
        model = start + rng.integers(-8, 8, 5) / 8.0
        at_start, at_probe = gradients[i], tuple(np.array(gradients[i]) + rng.normal(size=5))
        contributions.append(
            Contribution(as_model(model), int(rng.integers(1, 64)), at_start, at_probe)
        )
    return start, contributions


def test_settle_gives_the_same_bits_in_every_order_of_the_clients():
    start, contributions = dyadic_round(11)
    previous = SearchRecord(
        (1.0, 0.0), (0.0,) * 5, (0.5, -1.0, 0.25, 2.0, 1.0), (3.0, -1.0, 2.0, 0.5, 1.5)
    )
    rng = np.random.default_rng(11)
    for record in (None, previous):
        first = settle(as_model(start), record, contributions)
        assert first[1].coefficients != (0.0, 0.0)  # a real step was taken
        for _ in range(20):
            order = rng.permutation(len(contributions))
            shuffled = [contributions[i] for i in order]
            assert settle(as_model(start), record, shuffled) == first


def test_settle_is_the_same_up_to_rounding_in_any_order_of_arbitrary_clients():
    # FedAvg sums in the order given, so the candidate (and so every later number) may differ
    # in its last bits; the step must not differ by more.
    clients = Clients(12, n_clients=5)
    start, _, contributions = clients.random_round()
    new, record = settle(as_model(start), None, contributions)
    again, record_again = settle(as_model(start), None, contributions[::-1])
    assert_close(vector(again), vector(new), np.abs(vector(new)).max(), rel=1e-12)
    assert record_again.coefficients == pytest.approx(record.coefficients, rel=1e-9)


# What is not a quadratic's curvature takes no step.


@pytest.mark.parametrize("previous", [False, True])
def test_probe_gradients_equal_to_the_start_gradients_take_no_step(previous):
    clients = Clients(13)
    start, _, contributions = clients.random_round()
    flat = [Contribution(c.model, c.n_samples, c.gradient, c.gradient) for c in contributions]
    record = exact_record(clients, clients.rng.normal(size=start.size)) if previous else None
    if previous:  # the previous direction is curved, but not d: the plane is refused
        flat_previous = SearchRecord(
            record.coefficients, record.gradient, record.step, (0.0,) * start.size
        )
        record = flat_previous
    new, result = settle(as_model(start), record, flat)
    assert result.coefficients == (0.0, 0.0)
    assert new == as_model(start)
    assert result.step == (0.0,) * start.size
    assert result.step_change == (0.0,) * start.size
    # The gradient recorded is the pooled one at the start, where the model stayed.
    gradient_scale = np.abs(clients.pooled_gradient(start)).max()
    assert_close(np.array(result.gradient), clients.pooled_gradient(start), gradient_scale)


def test_negative_curvature_takes_no_step():
    clients = Clients(14)
    start, _, contributions = clients.random_round()
    c = vector(candidate(contributions))
    # Gradients that grow against d: a curvature no MSE has.
    bent = [
        Contribution(
            k.model, k.n_samples, k.gradient, tuple(np.array(k.gradient) - 2.0 * (c - start))
        )
        for k in contributions
    ]
    new, record = settle(as_model(start), None, bent)
    assert record.coefficients == (0.0, 0.0)
    assert new == as_model(start)


# Found by this file's first draft: when every client sends the start back, FedAvg's rounding
# alone put the candidate an ulp from the start, settle took the gradients' rounding for the
# curvature and stepped by ~1e17, to a model 79 to 20,000 times worse.
@pytest.mark.parametrize("seed", [15, 16, 19, 24, 68, 333, 371])
def test_client_models_all_at_the_start_never_make_the_model_worse(seed):
    clients = Clients(seed)
    start = clients.rng.normal(size=clients.n_parameters)
    contributions = clients.contributions(start, [start.copy() for _ in clients.rows])
    new, _ = settle(as_model(start), None, contributions)
    assert clients.pooled_mse(vector(new)) <= clients.pooled_mse(start) * (1 + 1e-12)


def test_client_models_at_the_start_whose_fedavg_is_exact_take_no_step():
    # A start of small dyadic numbers, so FedAvg of copies of it gives its bits: d = 0.
    clients = Clients(15)
    start = clients.rng.integers(-16, 16, clients.n_parameters) / 8.0
    contributions = clients.contributions(start, [start.copy() for _ in clients.rows])
    assert candidate(contributions) == as_model(start)
    new, record = settle(as_model(start), None, contributions)
    assert record.coefficients == (0.0, 0.0)
    assert new == as_model(start)


# Refusals.


def test_no_contributions_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        settle(LinearModel.zeros(3), None, [])


@pytest.mark.parametrize(
    "gradient_size, probe_size", [(3, 4), (5, 4), (4, 3), (4, 5), (0, 4), (4, 0)]
)
def test_gradients_of_the_wrong_length_are_refused(gradient_size, probe_size):
    good = Contribution(LinearModel.zeros(3), 10, (1.0,) * 4, (2.0,) * 4)
    bad = Contribution(
        LinearModel(np.ones(3), 0.5), 10, (1.0,) * gradient_size, (2.0,) * probe_size
    )
    for contributions in ([good, bad], [bad, good]):
        with pytest.raises(ValueError, match="must have 4 numbers"):
            settle(LinearModel.zeros(3), None, contributions)


def good_record(n_parameters: int = 4) -> dict:
    return {
        "coefficients": (0.5, -0.25),
        "gradient": tuple(np.arange(n_parameters) * 0.1),
        "step": tuple(np.arange(n_parameters) * -1.0),
        "step_change": tuple(np.arange(n_parameters) + 0.5),
    }


def test_a_record_survives_the_trip_through_a_dict():
    record = SearchRecord.from_record(good_record(), 4)
    assert record.as_record() == good_record()
    assert SearchRecord.from_record(record.as_record(), 4) == record
    assert set(record.as_record()) == set(RECORD_KEYS)


@pytest.mark.parametrize("missing", RECORD_KEYS)
def test_a_record_missing_a_key_is_refused(missing):
    record = good_record()
    del record[missing]
    with pytest.raises(ValueError, match="must record"):
        SearchRecord.from_record(record, 4)


def test_a_record_with_another_key_is_refused():
    record = good_record() | {"momentum": (1.0,)}
    with pytest.raises(ValueError, match="must record"):
        SearchRecord.from_record(record, 4)
    with pytest.raises(ValueError, match="must record"):
        SearchRecord.from_record({}, 4)


@pytest.mark.parametrize(
    "key, size, wanted",
    [
        ("coefficients", 1, 2),
        ("coefficients", 3, 2),
        ("gradient", 3, 4),
        ("gradient", 5, 4),
        ("step", 0, 4),
        ("step", 5, 4),
        ("step_change", 3, 4),
    ],
)
def test_a_record_of_the_wrong_size_is_refused(key, size, wanted):
    record = good_record()
    record[key] = (1.0,) * size
    with pytest.raises(ValueError, match=f"the search's {key} has {size} numbers, not {wanted}"):
        SearchRecord.from_record(record, 4)


def test_a_record_for_another_model_size_is_refused():
    with pytest.raises(ValueError, match="not 5"):
        SearchRecord.from_record(good_record(4), 5)
