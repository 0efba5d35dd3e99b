"""`python -m fedchain.flower simulate`: a whole run in Flower's local simulation, in this
process (Flower's run_simulation, on Ray), for scripts and tests; `flwr run .` is the same run
from Flower's own command line."""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedchain import settings
from fedchain.cli.arguments import add_run_length_flags, integer_in, parser_for
from fedchain.cli.server import new_run_chain_path
from fedchain.flower.config import ConfigError, FlowerRun
from fedchain.learning.aggregation import RULES
from fedchain.ledger.report import Verdict

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2
# Flower reports to its makers and looks for a newer release unless told not to; neither may
# leave this machine unasked.
QUIET_FLOWER = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Ray's coming default (it leaves the GPU list alone with no GPU asked for), and no
    # warning at every start that it is coming.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = parser_for(
        prog="python -m fedchain.flower simulate",
        description="Run the federation in Flower's local simulation: the same clients, rules "
        "and chain as server.py and its clients, with Flower carrying the messages.",
    )
    flag = parser.add_argument
    add_run_length_flags(parser)
    flag("--seed", type=integer_in(0), default=settings.RUN_SEED, help="the run's seed")
    flag(
        "--chain",
        type=Path,
        default=None,
        help=f"the chain file; must not exist (default: a new {settings.RUNS_DIR}/DATE-TIME/"
        f"{settings.CHAIN_NAME})",
    )
    flag(
        "--clients",
        type=integer_in(2),
        default=settings.CLIENTS,
        help="SuperNodes: with 2, cli1 and cli2 on the bundled client1.csv and client2.csv; "
        "with more, the same rows split evenly",
    )
    flag("--aggregation", choices=sorted(RULES), default="fedavg", help="the rule")
    flag(
        "--replicas",
        type=Path,
        default=settings.REPLICA_DIR,
        help="where each client keeps its replica of the chain",
    )
    flag("--keys", type=Path, default=settings.KEY_DIR, help="where the keys are kept")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chain = args.chain or new_run_chain_path()
    if chain.exists():
        print(f"error: --chain {chain} exists: a run never writes over a chain", file=sys.stderr)
        return EXIT_USAGE
    try:
        run = FlowerRun.from_config(
            {
                "rounds": args.rounds,
                "seed": args.seed,
                "difficulty": args.difficulty,
                "clients": args.clients,
                "aggregation": args.aggregation,
                "chain": str(chain),
                "replicas": str(args.replicas),
                "keys": str(args.keys),
                "key": str(args.keys / "server.key"),
            }
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    for name, value in QUIET_FLOWER.items():
        os.environ.setdefault(name, value)
    verdict = simulate(run)
    return EXIT_OK if verdict is Verdict.VALID else EXIT_RUN_FAILED


def simulate(run: FlowerRun) -> Verdict | None:
    """Run RUN in Flower's simulation, one SuperNode a client; the chain's verdict (None if the
    ServerApp never finished)."""
    # Imported here: flwr takes half a second to import, and --help needs none of it.
    from flwr.simulation import run_simulation

    from fedchain.flower.client_app import make_client_app
    from fedchain.flower.server_app import make_server_app

    outcome: list[Verdict] = []
    run_simulation(
        server_app=make_server_app(run, outcome=outcome),
        client_app=make_client_app(run),
        num_supernodes=run.clients,
        # One CPU a client, on loopback: Ray otherwise binds the machine's own address.
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"_node_ip_address": "127.0.0.1", "include_dashboard": False},
        },
    )
    return outcome[0] if outcome else None
