"""The run's defaults, in one place: the command lines, the server, the clients and the simulation
all start from these, so the three-terminal run, the demo and the tests agree without repeating.
"""

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

# Where a run happens.
HOST = "127.0.0.1"  # loopback: nothing outside this machine can reach the server by default
PORT = 10000

# The run itself.
CLIENTS = 2
ROUNDS = 5
# A client takes part in a run of at most this many rounds: far beyond any run here, but a
# server cannot have a client follow a chain without end.
MAX_ROUNDS = 10_000
RUN_SEED = 0
DIFFICULTY_BITS = 18  # about a quarter of a second of mining a block here
# A client refuses a run mined at less: at 0 bits anyone re-mines a forged history in no time.
MIN_DIFFICULTY_BITS = 8
TARGET = "charges"  # the bundled data's target column: ln(yearly medical charges)
TARGET_UNIT = "ln(USD per year)"  # its unit, as the chain records it

# Local training (a client's own settings; they do not change what a verifier checks).
GENERATIONS = 300
POPULATION = 24

# Waits. Every one is bounded; the flag that sets each is named where it runs out.
ROUND_TIMEOUT_S = 60.0  # the server's wait for every client's update in a round
JOIN_TIMEOUT_S = 120.0  # the server's wait for its clients to join
REJOIN_TIMEOUT_S = 120.0  # below its quorum, the server's wait for clients to come back
REGISTER_TIMEOUT_S = 10.0  # how long a new connection may take to register
CONNECT_TIMEOUT_S = 10.0  # a client's window to find the server: the programs start in any order
CLIENT_TIMEOUT_S = 300.0  # a client's longest wait for the server's next message
RECONNECT_TIMEOUT_S = 120.0  # a client's window to find the server again when it vanishes
SEND_TIMEOUT_S = 10.0  # a peer that will not take a message in this long is gone

# A block as JSON takes about 25 bytes a weight: 16 MiB holds 10,000-feature models of 60 clients.
MAX_FRAME_BYTES = 1 << 24

# Files.
RUNS_DIR = Path("runs")  # each run's own folder by default: runs/<UTC date-time>/chain.jsonl
CHAIN_NAME = "chain.jsonl"
SLOW_MINING_S = 2.0  # a block expected to take longer to mine is announced, with the estimate
SLOW_TRAINING_S = 2.0  # a client still training after this long says so
REPLICA_DIR = Path("replicas")
KEY_DIR = Path("keys")  # keys/server.key, keys/NAME.key: made on first run, private to the owner
SERVER_KEY_PATH = KEY_DIR / "server.key"
KNOWN_SERVERS_PATH = KEY_DIR / "known_servers"


def bundled_data(name: str) -> Path:
    """A file of the bundled data set: inside the package once installed, else the checkout's
    data/ folder, else the installed package's (a Flower app runs from a copy of the package
    that holds no CSV files); a missing file is left for the loader to report."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "bundled_data" / name, package.parent / "data" / name):
        if candidate.is_file():
            return candidate
    try:
        installed = Path(distribution("fedchain").locate_file(f"fedchain/bundled_data/{name}"))
    except PackageNotFoundError:
        return package.parent / "data" / name
    return installed if installed.is_file() else package.parent / "data" / name
