"""The federated server: `python server.py` in the first terminal. `--help` lists the flags."""

from collections.abc import Sequence

from fedchain.cli import server


def main(argv: Sequence[str] | None = None) -> int:
    return server.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
