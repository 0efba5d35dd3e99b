"""Attacks on the global model, for demonstrating the robust rules and testing them only: a
client given one of these trains honestly, then sends a poisoned model (signed like any other)."""

from dataclasses import dataclass

import numpy as np

from fedchain.learning.linear_model import LinearModel

KINDS = ("scale", "noise")


@dataclass(frozen=True)
class Poison:
    """scale=S: send the received model plus S x the honest change; noise=S: add Gaussian noise
    of standard deviation S to every weight and the bias."""

    kind: str
    amount: float

    def __str__(self) -> str:
        return f"{self.kind}={self.amount:g}"

    def apply(self, received: LinearModel, trained: LinearModel, *, seed: int) -> LinearModel:
        """The model to send in place of TRAINED, the honest result of training RECEIVED."""
        if self.kind == "scale":
            s = self.amount
            return LinearModel(
                received.weights + s * (trained.weights - received.weights),
                received.bias + s * (trained.bias - received.bias),
            )
        noise = np.random.default_rng(seed).normal(scale=self.amount, size=trained.n_features + 1)
        return LinearModel(trained.weights + noise[:-1], trained.bias + float(noise[-1]))


def parse_poison(text: str) -> Poison:
    """KIND=NUMBER, e.g. scale=-10 or noise=5; ValueError saying what is wrong."""
    kind, _, amount = text.partition("=")
    if kind not in KINDS:
        raise ValueError(f"a poison is scale=S or noise=S, not {text!r}")
    try:
        value = float(amount)
    except ValueError:
        raise ValueError(f"{amount!r} in {text!r} is not a number") from None
    if not np.isfinite(value) or (kind == "noise" and value < 0):
        raise ValueError(f"{text!r}: the amount must be finite (and noise's not negative)")
    return Poison(kind, value)
