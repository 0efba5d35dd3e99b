"""The ServerApp: the run's server on Flower's Grid (grid_driver.py), writing the chain file its
run config names, then verifying it as `blockchain.py verify` does."""

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedchain.cli.server import new_run_chain_path
from fedchain.federation.server import RunAborted
from fedchain.flower.config import FlowerRun
from fedchain.flower.grid_driver import FlowerServer
from fedchain.learning.dataset import DataError
from fedchain.ledger.report import Verdict, report_chain
from fedchain.trust.errors import TrustError


def make_server_app(
    run: FlowerRun | None = None,
    say: Callable[[str], None] = print,
    outcome: list[Verdict] | None = None,
) -> ServerApp:
    """A ServerApp for RUN, or for its run config (`flwr run`). It appends the chain's verdict
    to OUTCOME, if given, so a caller in the same process can tell how the run ended."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = run if run is not None else FlowerRun.from_config(context.run_config)
        chain_path = settings.chain or new_run_chain_path()
        server = FlowerServer(grid, settings, chain_path, say)
        try:
            blocks = server.serve()
        except RunAborted as error:
            say(f"run stopped: {error}")
            blocks = server.blocks
        except (DataError, TrustError, OSError) as error:  # the run's files: named in the error
            say(f"error: the run cannot start: {error}")
            if outcome is not None:
                outcome.append(Verdict.INVALID)
            return
        verdict = report_chain(blocks, say, show_blocks=False, server_key=server.server_key)
        say(f"chain: {chain_path}")
        if outcome is not None:
            outcome.append(verdict)

    return app


app = make_server_app()
