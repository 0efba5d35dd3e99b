"""The README and docs/ against the code: every flag a program's --help lists is documented, every
flag the pages name exists, every relative link and anchor resolves, and the README's import
arrows are the ones tests/test_architecture.py allows. In-process and fast: no program is run."""

import re
from pathlib import Path

import pytest
from layers import ALLOWED
from processes import ROOT
from program_helps import HELPS

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
# Flags the pages may name that belong to other programs (pip's, pytest's), each with its reason.
# None today: every flag the pages name is one of ours.
NOT_OURS: dict[str, str] = {
    # Flower's command lines (docs/flower.md), whose --help is Flower's to keep.
    "--stream": "flwr run",
    "--run-config": "flwr run",
    "--federation-config": "flwr run",
    "--ssl-ca-certfile": "flower-superlink",
    "--ssl-certfile": "flower-superlink",
    "--ssl-keyfile": "flower-superlink",
    "--enable-supernode-auth": "flower-superlink",
    "--superlink": "flower-supernode",
    "--root-certificates": "flower-supernode",
    "--auth-supernode-private-key": "flower-supernode",
    "--node-config": "flower-supernode",
}


def listed_flags(text: str) -> set[str]:
    """The long flags an argparse help lists: its option lines, not its prose."""
    flags = set()
    for line in text.splitlines():
        if re.match(r"  -", line):  # an option line; wrapped help sits further right
            spec = re.split(r"\s{2,}", line.strip())[0]
            flags |= set(FLAG.findall(spec))
    return flags


def named_in(text: str) -> set[str]:
    return set(FLAG.findall(text))


def outside_code_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in outside_code_fences(page.read_text()):
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match[1])
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return found


def relative_links(page: Path) -> list[str]:
    text = "\n".join(outside_code_fences(page.read_text()))
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]  # not http:, https:, mailto:


DOCUMENTED = set().union(*(named_in(page.read_text()) for page in PAGES))
EXISTING = set().union(*(listed_flags(text) for text in HELPS.values()))


@pytest.mark.parametrize("command", sorted(HELPS))
def test_every_flag_a_command_lists_is_documented(command):
    undocumented = listed_flags(HELPS[command]) - DOCUMENTED
    assert not undocumented, f"{command}: not in README.md or docs/: {sorted(undocumented)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_a_page_names_exists(page):
    unknown = named_in(page.read_text()) - EXISTING - set(NOT_OURS)
    assert not unknown, f"{page.name} names flags no command has: {sorted(unknown)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link}: no such file"
        if anchor:
            assert anchor in anchors(target), f"{page.name}: {link}: no such heading"


def test_the_readmes_import_arrows_are_the_architecture_tests():
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("entry points →"))
    steps = [re.findall(r"`(\w+)`", step) for step in line.split("→")[1:]]
    parts = [part for step in steps for part in step]
    assert sorted(parts) == sorted(ALLOWED), "each part of the package on the line, once"
    for i, step in enumerate(steps):
        below = {part for later in steps[i + 1 :] for part in later}
        for part in step:
            upward = ALLOWED[part] - below
            assert not upward, f"the README puts {part} above or beside {sorted(upward)}"


def test_the_checks_see_what_they_look_for():
    assert listed_flags("options:\n  -o OUT, --output OUT  the file\n      --not-an-option") == {
        "--output"
    }
    assert slug("Non-IID data: drift correction (`scaffold`)") == (
        "non-iid-data-drift-correction-scaffold"
    )
    assert slug("Differential privacy for each client's rows") == (
        "differential-privacy-for-each-clients-rows"
    )
    assert "--max-epsilon" in EXISTING and "--dp-epsilon" in EXISTING and "--sort-by" in EXISTING
