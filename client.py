"""A federated client: `python client.py --name NAME --data CSV`. `--help` lists the flags."""

from collections.abc import Sequence

from fedchain.cli import client


def main(argv: Sequence[str] | None = None) -> int:
    return client.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
