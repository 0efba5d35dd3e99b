"""A global model taken off a verified chain, in scikit-learn's names, and its JSON file.

The file says where the model came from (the round, its block's hash and the chain's genesis
hash), so anyone holding the chain can check that the model is the one it records, and what it
predicts: the target, and its unit where the chain records them (formats 10 to 17). This is the
only place that knows the file's layout.
"""

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedchain.checks import check_int, check_name, check_names, describe
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import check_unit

FORMAT = "fedchain-model/1"
TARGET_SOURCE = "named when the model was exported (--target): the chain does not record it"
TARGET_RECORDED = "recorded in the chain's genesis, with its unit (target_unit)"
_KEYS = {
    "format",
    "feature_names",
    "weights",
    "bias",
    "target",
    "target_source",
    "round",
    "block_hash",
    "genesis_hash",
}
_OPTIONAL_KEYS = {"target_unit"}  # written for a chain that records its target; older files lack it


class ModelFileError(ValueError):
    """A model file that cannot be used, naming what is wrong with it."""


class ChainModel:
    """The global model of one round of a chain: y ≈ X·coef_ + intercept_, X's columns named."""

    def __init__(
        self,
        model: LinearModel,
        feature_names: Sequence[str],
        *,
        target: str,
        round: int,
        block_hash: str,
        genesis_hash: str,
        unit: str | None = None,
    ) -> None:
        self.model = model
        self.feature_names = check_names(tuple(feature_names), "feature_names")
        if len(self.feature_names) != model.n_features:
            raise ValueError(
                f"{len(self.feature_names)} feature names for {model.n_features} weights"
            )
        self.target = target
        # The target's unit as the chain records it ("": not stated); None: the chain records
        # no target, so TARGET is only what whoever exported the model named.
        self.unit = unit
        self.round = round
        self.block_hash = block_hash
        self.genesis_hash = genesis_hash

    # scikit-learn's names, so the model drops into code written for LinearRegression.
    @property
    def coef_(self) -> np.ndarray:
        return self.model.weights

    @property
    def intercept_(self) -> float:
        return self.model.bias

    @property
    def feature_names_in_(self) -> np.ndarray:
        return np.array(self.feature_names, dtype=object)

    @property
    def n_features_in_(self) -> int:
        return self.model.n_features

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Predictions for the rows of X: a DataFrame's columns are matched by name (others are
        left out), an array's are taken in feature_names' order."""
        return self.model.predict(self.features_of(X))

    def score(self, X: pd.DataFrame | np.ndarray, y: Sequence[float]) -> float:
        """R² of the predictions for X against y, as scikit-learn's regressors score."""
        y = np.asarray(y, dtype=np.float64)
        residual = self.predict(X) - y
        return 1.0 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum())

    def features_of(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """X as a float64 array with this model's columns, in its order."""
        if isinstance(X, pd.DataFrame):
            if missing := [name for name in self.feature_names if name not in X.columns]:
                raise ValueError(f"the rows lack the model's column(s) {', '.join(missing)}")
            X = X[list(self.feature_names)]
        # Row-major, as numpy's own arrays are: the same rows then give the same bits.
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have {self.n_features_in_} columns, not shape {X.shape}")
        return X

    def __repr__(self) -> str:
        return (
            f"ChainModel(round {self.round} of chain {self.genesis_hash[:12]}…, "
            f"{self.n_features_in_} features, target {self.target!r})"
        )

    def to_json(self) -> str:
        """The model file's text: the model, its target and where on which chain it is."""
        record = {
            "format": FORMAT,
            "feature_names": list(self.feature_names),
            "weights": [float(w) for w in self.coef_],
            "bias": self.intercept_,
            "target": self.target,
            "target_source": TARGET_SOURCE if self.unit is None else TARGET_RECORDED,
            "round": self.round,
            "block_hash": self.block_hash,
            "genesis_hash": self.genesis_hash,
        }
        if self.unit is not None:
            record["target_unit"] = self.unit
        # repr-style floats: the file holds the chain's weights bit for bit.
        return json.dumps(record, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def model_from_json(text: str) -> ChainModel:
    """Parse a model file's text; raise ModelFileError naming the field that is wrong."""
    try:
        record = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"not a model file: {error}") from None
    if not isinstance(record, dict):
        raise ModelFileError("not a model file: a JSON object was expected")
    if record.get("format") != FORMAT:
        raise ModelFileError(f"format is {describe(record.get('format'))}, not {FORMAT!r}")
    if missing := _KEYS - record.keys():
        raise ModelFileError(f"lacks {', '.join(sorted(missing))}")
    if extra := record.keys() - _KEYS - _OPTIONAL_KEYS:
        raise ModelFileError(f"has unknown field(s) {', '.join(map(describe, sorted(extra)))}")
    try:
        weights = [_number("weights", w) for w in _typed("weights", record["weights"], list)]
        return ChainModel(
            LinearModel(np.array(weights, dtype=np.float64), _number("bias", record["bias"])),
            _typed("feature_names", record["feature_names"], list),
            # Held to the rules a chain's target is: they are printed, and head a CSV column.
            target=check_name(_typed("target", record["target"], str), "target"),
            round=check_int(record["round"], 0, 2**63 - 1, "round"),
            block_hash=_typed("block_hash", record["block_hash"], str),
            genesis_hash=_typed("genesis_hash", record["genesis_hash"], str),
            unit=check_unit(_typed("target_unit", record["target_unit"], str))
            if "target_unit" in record
            else None,
        )
    except (TypeError, ValueError) as error:
        raise ModelFileError(str(error)) from None


def _typed(where: str, value: object, kind: type) -> object:
    if type(value) is not kind:
        raise TypeError(f"{where} must be a JSON {kind.__name__}, not {describe(value)}")
    return value


def _number(where: str, value: object) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise TypeError(f"{where} must hold finite numbers, not {describe(value)}")
    return float(value)


def _refuse_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a finite number")
