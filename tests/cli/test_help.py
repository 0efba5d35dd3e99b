"""Every program's --help: a default shown once, only where it says something, and --data worded
as its usage line shows it."""

import re

import pytest
from program_helps import HELPS


def options(help_text: str) -> dict[str, str]:
    """Each option's entry in HELP_TEXT, its wrapped lines joined, by its first line."""
    entries, current = {}, None
    for line in help_text.splitlines():
        if re.match(r"  -", line):
            current = line.strip()
            entries[current] = line
        elif current is not None and line.startswith(" " * 4):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", sorted(HELPS))
def test_help_shows_a_default_once_and_only_when_it_says_something(command):
    text = HELPS[command]
    assert "(default: None)" not in text and "(default: False)" not in text
    for option, entry in options(text).items():
        assert entry.count("(default") <= 1, f"{command}: {option}: {entry}"


def test_datas_help_matches_the_usage_line():
    text = HELPS["client.py"]
    (data,) = (entry for option, entry in options(text).items() if option.startswith("--data"))
    assert "[--data DATA]" in text  # optional in the usage: --show-key needs no rows
    assert "(required)" not in data and "unless --show-key" in data


def test_the_check_reads_wrapped_options():
    text = "options:\n  --a A    one (default:\n           1) (default: 2)\n  --b  two\n"
    assert options(text) == {
        "--a A    one (default:": "  --a A    one (default: 1) (default: 2)",
        "--b  two": "  --b  two",
    }
