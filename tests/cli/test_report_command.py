"""`blockchain.py report`: the page of a verified chain, rendered by a real headless Chromium with
the network cut off, and the chains it refuses as the other readers refuse them."""

import html
import os
import re
import shutil
import subprocess

import pytest
from chain_helpers import SERVER_KEY, fixed_key
from in_process import run_main
from processes import WAIT_S
from report_chains import HOSTILE_NAME, HOSTILE_REASON, hostile_chain, metrics_for

from fedchain.ledger.store import ChainWriter, block_to_json
from fedchain.trust.keys import public_hex

# Every request fails: no proxy listens on port 9, and no name resolves.
NO_NETWORK = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND")


@pytest.fixture(scope="module")
def blocks():
    return hostile_chain()


@pytest.fixture
def chain(tmp_path, blocks):
    path = tmp_path / "chain.jsonl"
    with ChainWriter(path) as writer:
        for block in blocks:
            writer.append(block)
    metrics_for(blocks).to_csv(tmp_path / "metrics.csv", index=False)
    return path


def report(chain, *flags):
    page = chain.parent / "report.html"
    metrics = ("--metrics", chain.parent / "metrics.csv")
    return run_main("blockchain.py", "report", chain, *metrics, "-o", page, *flags), page


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:  # never a skip: CI installs it (.ci/run), and so must a developer
        pytest.fail("this test renders the page in Chromium: apt-get install chromium")
    return found


def dump_dom(page, profile) -> str:
    """The DOM headless Chromium builds from PAGE, with no way out to the network."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # as root, as CI runs it
            "--disable-gpu",
            f"--user-data-dir={profile}",  # its own, so parallel tests share no profile lock
            *NO_NETWORK,
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**os.environ, "HOME": str(profile)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_page_renders_in_a_browser_with_no_network_naming_every_block(chain, blocks, tmp_path):
    result, page = report(chain, "--server-key", public_hex(SERVER_KEY))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {page}: 4 blocks\n" and result.stderr == ""
    dom = dump_dom(page, tmp_path / "profile")
    table = dom.split('<h2 id="blocks">', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == len(blocks) + 1  # and the header row
    for block in blocks:
        assert re.search(f'<span id="block-{block.index}">{block.index} \\(', dom)
        assert block.hash in dom
    assert "the run is complete (2 of 2 rounds)" in dom and "the key the reader pinned" in dom
    # The hostile strings reached the DOM as text: no element of theirs was made.
    assert html.escape(HOSTILE_NAME, quote=False) in dom
    assert html.escape(HOSTILE_REASON, quote=False) in dom
    assert "<script" not in dom and dom.count("<img") == 1
    (src,) = re.findall(r'<img src="([^"]*)"', dom)
    assert src.startswith("data:image/png;base64,iVBORw0KGgo")  # a PNG, carried inside


def test_a_chain_that_does_not_verify_or_is_refused_gets_no_page(chain, blocks):
    lines = chain.read_text().splitlines()
    lines[2] = block_to_json(blocks[2]).replace('"bias":', '"bias":1', 1)
    spoiled = chain.with_name("spoiled.jsonl")
    spoiled.write_text("\n".join(lines) + "\n")
    result, page = report(spoiled)
    assert result.returncode == 1 and result.stdout == ""
    assert re.fullmatch(r"error: \S+ does not verify: block 2: [^\n]+\n", result.stderr)
    assert not page.exists()
    other_key = public_hex(fixed_key("another server"))
    refused, page = report(chain, "--server-key", other_key)
    assert refused.returncode == 6 and "is refused" in refused.stderr and not page.exists()


def test_without_a_pinned_key_the_page_and_stderr_say_anyone_could_have_made_it(chain):
    result, page = report(chain)
    assert result.returncode == 0 and "no server key pinned" in result.stderr
    assert "no key was pinned: anyone holding some key" in page.read_text(encoding="utf-8")


def test_metrics_of_another_run_are_refused(chain, blocks):
    metrics_for(blocks).assign(block_hash="ab" * 32).to_csv(
        chain.parent / "metrics.csv", index=False
    )
    result, page = report(chain)
    assert result.returncode == 2 and "belongs to another run" in result.stderr
    assert not page.exists()
