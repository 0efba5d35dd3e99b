"""The chain tool: `python blockchain.py verify PATH` checks a chain file, `show PATH` prints it,
`compare A B` finds where two copies part, `export PATH` writes its global model as JSON and
`plot PATH` draws its run.

The ledger itself lives in fedchain/ledger/: block.py (fields and canonical bytes), mining.py,
store.py (JSON Lines), verification.py (the rules), chain.py (appending), report.py.
"""

from collections.abc import Sequence

from fedchain.cli import chain


def main(argv: Sequence[str] | None = None) -> int:
    return chain.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
