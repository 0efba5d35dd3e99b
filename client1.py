"""Client 1: `python client1.py` in a terminal of its own. `--help` lists the flags."""

from pathlib import Path

from client import main

if __name__ == "__main__":
    data = Path(__file__).resolve().parent / "data" / "client1.csv"
    raise SystemExit(main(default_name="cli1", default_data=str(data)))
