"""`python -m fedchain.flower simulate …`: see simulate.py."""

import sys

from fedchain.flower import simulate

if len(sys.argv) < 2 or sys.argv[1] != "simulate":
    print("usage: python -m fedchain.flower simulate [--help | options]", file=sys.stderr)
    raise SystemExit(2)
raise SystemExit(simulate.main(sys.argv[2:]))
