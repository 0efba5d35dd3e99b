"""Client 2: `python client2.py` in a terminal of its own. `--help` lists the flags."""

from collections.abc import Sequence

from fedchain import settings
from fedchain.cli import client


def main(argv: Sequence[str] | None = None) -> int:
    data = settings.bundled_data("client2.csv")
    return client.main(argv, default_name="cli2", default_data=str(data))


if __name__ == "__main__":
    raise SystemExit(main())
