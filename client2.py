"""Client 2: `python client2.py` in a terminal of its own. `--help` lists the flags."""

from pathlib import Path

from client import main

if __name__ == "__main__":
    data = Path(__file__).resolve().parent / "data" / "client2.csv"
    raise SystemExit(main(default_name="cli2", default_data=str(data)))
