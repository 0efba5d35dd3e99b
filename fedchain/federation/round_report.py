"""How a round went, as the log's line and the metrics file's rows. The protocol fills in what it
knows; the transport finishes it once the block is written and sent, which the round's time must
include, with the clock it passed the protocol."""

import math
from dataclasses import dataclass

from fedchain.ledger.block import Block
from fedchain.ledger.report import describe_choice


@dataclass(frozen=True)
class ClientFigures:
    """One client's part in a round: its rows and what it reported (shown, never trusted)."""

    name: str
    rows: int
    reported: dict


@dataclass(frozen=True)
class RoundReport:
    block: Block
    planned_rounds: int
    n_clients: int  # the run's
    clients: tuple[ClientFigures, ...]  # those whose update the block holds
    started_s: float  # on the protocol's clock
    cpu_started_s: float
    waiting_s: float  # spent short of the quorum, waiting for clients: not the round's doing
    mining_s: float
    mining_cpu_s: float
    test_mse: float = math.nan  # on the server's held-out rows, if it has some
    test_r2: float = math.nan

    def finish(self, now_s: float, cpu_now_s: float) -> tuple[list[dict], list[str]]:
        """The metrics rows and the log lines, the round's time measured to NOW_S."""
        index = self.block.index
        round_s = now_s - self.started_s - self.waiting_s
        # What the server itself spent on the round, on a core: checking, averaging, writing,
        # sending. CPU time, so neither waiting for peers nor for a busy core counts, nor mining.
        own_s = cpu_now_s - self.cpu_started_s - self.mining_cpu_s
        shared = {
            "round": index,
            "test_mse": self.test_mse,
            "test_r2": self.test_r2,
            "mining_s": self.mining_s,
            "nonce": self.block.nonce,
            "round_s": round_s,
            "server_cpu_s": own_s,
            "block_hash": self.block.hash,
        }
        rows = [
            shared
            | {
                "client": client.name,
                "rows": client.rows,
                "local_mse_before": client.reported.get("local_mse_before"),
                "local_mse_after": client.reported.get("local_mse"),
                "train_s": client.reported.get("train_s"),
            }
            for client in self.clients
        ]
        # One short line a round; the metrics file has the details.
        scored = f", test MSE {self.test_mse:.4g} (R² {self.test_r2:.3f})"
        if math.isnan(self.test_mse):  # no held-out rows to score on
            scored = ""
        lines = [
            f"round {index}/{self.planned_rounds}: {len(self.clients)} of {self.n_clients} "
            f"clients{scored}, {1000 * round_s:.0f} ms, block {self.block.hash[:8]}"
        ]
        if self.block.choice or self.block.search:  # what the rule chose, naming any outlier
            lines.append(f"  {describe_choice(self.block)}")
        return rows, lines
