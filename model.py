"""The model, for a person opening this file: linear regression y ≈ X·w + b, with w and b in the
data's own units, trained by each client with a PyGAD search on its own rows and averaged by the
server with FedAvg (McMahan et al. 2017), weighted by each client's row count.

In Python:

    from model import LinearModel, fedavg, fit_lstsq, mse, r2
    a, b = LinearModel([1.0, 2.0], 0.5), LinearModel([3.0, 0.0], 1.5)
    fedavg([(a, 100), (b, 300)])          # LinearModel(weights=[2.5, 0.5], bias=1.25)

From a shell, the global model a chain holds (the chain is verified first), and that model put
to use on a CSV's rows (a model file from `python blockchain.py export`, or the chain itself):

    python model.py chain.jsonl [--round N]
    python model.py predict --model model.json --data rows.csv [-o predictions.csv]
    python model.py score --chain chain.jsonl --data data/test.csv

Where each piece lives: fedchain/learning/linear_model.py (the model and its measures),
aggregation.py (FedAvg), local_training.py (the PyGAD search), dataset.py (reading a CSV).
"""

from collections.abc import Sequence

from fedchain.cli import model
from fedchain.learning.aggregation import fedavg
from fedchain.learning.linear_model import LinearModel, fit_lstsq, mse, r2

__all__ = ["LinearModel", "fedavg", "fit_lstsq", "main", "mse", "r2"]


def main(argv: Sequence[str] | None = None) -> int:
    return model.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
