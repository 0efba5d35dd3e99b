"""The end of a server's run, for the person who started it: what was learned, in plain words,
where everything is, what to run next, and the chain as stored, one line a block, verified."""

import math
from collections.abc import Callable
from pathlib import Path

from fedchain import settings
from fedchain.cli.console import command_for, shown
from fedchain.learning.dataset import Dataset
from fedchain.learning.linear_model import mse, r2
from fedchain.ledger.block import Block
from fedchain.ledger.report import Verdict, report_chain
from fedchain.ledger.store import ChainFileError, load_chain


def summarise_run(
    chain_path: Path,
    metrics_path: Path | None,
    test_data: Dataset | None,
    target: str,
    say: Callable[[str], None],
    *,
    server_key: str,
) -> bool:
    """Say what the run learned and where it is, then the stored chain's blocks and verdict;
    True if the chain verifies, signed by SERVER_KEY."""
    blocks = _read(chain_path, say)
    if blocks is None:
        return False
    rounds = [block for block in blocks[1:] if block.cli]
    clients = sorted({name for block in rounds for name in block.cli})
    say(
        f"{len(rounds)} round{'s' if len(rounds) != 1 else ''} with {len(clients)} clients "
        f"({', '.join(clients[:8])}{', …' if len(clients) > 8 else ''})"
    )
    if test_data is not None and rounds:
        first, last = rounds[0].server_model, rounds[-1].server_model
        X, y = test_data.X, test_data.y
        recorded = blocks[0].run.target if blocks[0].targeted else None
        if recorded is not None:  # the unit as the chain records it
            what = f"target {recorded.column}" + (
                f", in {recorded.unit}" if recorded.unit else ", its unit not stated"
            )
        else:
            what = f"target {target}" + (
                ", the log of the yearly charges" if target == settings.TARGET else ""
            )
        say(f"the global model on {len(y)} held-out rows ({what}):")
        say(
            f"  test MSE {mse(last, X, y):.4g} (round 1: {mse(first, X, y):.4g}), "
            f"R² {_r2(last, test_data):.3f} (round 1: {_r2(first, test_data):.3f})"
        )
    say(f"chain: {chain_path}")
    chain, model = command_for("chain"), command_for("model")  # as the user ran this server
    if metrics_path is not None and metrics_path.exists():
        say(f"metrics, a row per round and client: {metrics_path}")
        figure = chain_path.with_name("convergence.png")
        say(f"a figure of the run: {chain} plot {chain_path} --metrics {metrics_path} -o {figure}")
    say(f"every block in full: {chain} show {chain_path}")
    say(f"the model on new rows: {model} predict --chain {chain_path} --data ROWS.csv")
    return show_chain(chain_path, say, blocks, server_key=server_key)


def show_chain(
    path: Path,
    say: Callable[[str], None],
    blocks: list[Block] | None = None,
    *,
    server_key: str,
) -> bool:
    """The chain as stored: one line a block (who signed, who attested), and whether it
    verifies; True if it does, is signed by SERVER_KEY (the server's own: pinned, so no note
    that anyone could have made it), and the run it records is complete."""
    blocks = _read(path, say) if blocks is None else blocks
    if blocks is None:
        return False
    say(f"the chain, from {path}:")
    return report_chain(blocks, say, show_blocks=False, server_key=server_key) is Verdict.VALID


def _read(path: Path, say: Callable[[str], None]) -> list[Block] | None:
    try:
        loaded = load_chain(path)
    except FileNotFoundError:
        say("no block was written")
        return None
    except ChainFileError as error:
        say(f"invalid: {shown(error)}")
        return None
    except OSError as error:
        say(f"cannot read {path}: {error}")
        return None
    if loaded.dropped_tail:
        say(f"warning: {loaded.dropped_tail}")
    return loaded.blocks


def _r2(model, data: Dataset) -> float:
    value = r2(model, data.X, data.y)
    return value if math.isfinite(value) else math.nan
