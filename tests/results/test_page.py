"""The report page, built from verified chains in memory: every block named, the run's settings,
each client's ε, the verdict, the figure carried inside, and every string from the chain shown as
text (a hostile client name is markup to no one)."""

import base64
import html
import re
from html.parser import HTMLParser

import pytest
from chain_helpers import build_chain
from processes import ROOT
from report_chains import EPSILON, HOSTILE_NAME, HOSTILE_REASON, hostile_chain

from fedchain.ledger.chain import verify_chain
from fedchain.ledger.report import describe_choice
from fedchain.ledger.store import load_chain
from fedchain.results.page import BLOCK_COLUMNS, chain_page

PNG = b"\x89PNG\r\n\x1a\n not a real figure"
# Every element the page is built of: anything else came in through a string from the chain.
PAGE_TAGS = {
    *("html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "span", "img"),
    *("table", "thead", "tbody", "tr", "th", "td"),
}


class Elements(HTMLParser):
    """Each start tag of a page and its attributes, as a browser's tokenizer reads them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def chain():
    return verify_chain(hostile_chain())


@pytest.fixture(scope="module")
def page(chain):
    return chain_page(chain, figure_png=PNG, pinned=True, source="runs/chain.jsonl")


def test_every_block_has_a_row_with_its_hash_nonce_and_kind(chain, page):
    body = page.split('<h2 id="blocks">', 1)[1]
    assert body.count("<tr>") == len(chain.blocks) + 1  # and the header
    for block in chain.blocks:
        assert f'<span id="block-{block.index}">' in body
        assert f"<code>{block.hash}</code>" in body and f"<td>{block.nonce}</td>" in body
    assert [f"{b.index} (" for b in chain.blocks] == re.findall(r'id="block-\d+">(\d+ \()', body)
    assert "0 (genesis)" in body and "3 (closing)" in body
    assert all(f"<th>{html.escape(column)}</th>" in body for column in BLOCK_COLUMNS)


def test_a_hostile_name_and_reason_are_shown_as_text_never_as_markup(page):
    assert HOSTILE_NAME not in page and HOSTILE_REASON not in page
    assert html.escape(HOSTILE_NAME) in page
    assert f"{html.escape(HOSTILE_NAME)}: {html.escape(HOSTILE_REASON)}" in page  # left out, why
    elements = Elements(page).tags
    assert {tag for tag, _ in elements} <= PAGE_TAGS  # no <script>, no second <img>
    assert [tag for tag, _ in elements].count("img") == 1
    assert not any(name.startswith("on") for _, attrs in elements for name in attrs)


def test_the_figure_is_carried_inside_and_nothing_is_loaded_from_outside(page):
    sources = [attrs["src"] for tag, attrs in Elements(page).tags if tag == "img"]
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == PNG
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "default-src 'none'; img-src data:" in page  # the browser refuses anything else


def test_the_runs_settings_clients_and_their_epsilon(chain, page):
    run = chain.genesis.run
    for text in (
        "<td>planned rounds</td><td>2</td>",
        "<td>rule</td><td>fedavg</td>",
        "<td>difficulty</td><td>8 bits</td>",
        f"<td>server key</td><td><code>{run.server_key}</code></td>",
        "<td>most ε admitted</td><td>no limit</td>",
    ):
        assert text in page
    assert f"<tr><td>cli1</td><td><code>{run.participants['cli1']}</code></td><td>535</td>" in page
    assert f"<td>535</td><td>{EPSILON:g}</td><td>1e-05</td><td>gaussian-ssp</td>" in page
    hostile = html.escape(HOSTILE_NAME)
    assert re.search(f"<tr><td>{re.escape(hostile)}</td>.*<td>97</td><td>—</td><td>—</td>", page)


def test_the_verdict_and_whose_chain_it_is(chain):
    pinned = chain_page(chain, figure_png=PNG, pinned=True, source="c.jsonl")
    assert "valid: 4 blocks; the run is complete (2 of 2 rounds)" in pinned
    assert "the key the reader pinned" in pinned and "no key was pinned" not in pinned
    unpinned = chain_page(chain, figure_png=PNG, pinned=False, source="c.jsonl")
    assert "no key was pinned: anyone holding some key could have made this chain" in unpinned


def test_an_incomplete_run_says_so_and_a_genesis_alone_has_no_figure():
    blocks = build_chain(rounds=3)
    unfinished = chain_page(verify_chain(blocks), figure_png=PNG, pinned=True, source="c")
    assert "incomplete: 4 blocks verify, but the run planned 3 rounds and holds 3" in unfinished
    alone = chain_page(verify_chain(blocks[:1]), figure_png=None, pinned=True, source="c")
    assert "<img" not in alone and "No round yet: nothing to draw." in alone


def test_who_signed_attested_and_was_left_out_of_each_block(page):
    rows = page.split('<h2 id="blocks">', 1)[1].split("<tr>")[2:]
    hostile, reason = html.escape(HOSTILE_NAME), html.escape(HOSTILE_REASON)
    # block 1: both contributed and signed; cli1 attested it in block 2
    assert f"<td>server, cli1, {hostile}</td><td>cli1</td><td>—</td>" in rows[1]
    assert f"<td>server, cli1</td><td>cli1</td><td>{hostile}: {reason}</td>" in rows[2]
    assert f"<td>server</td><td>—</td><td>{hostile}: {reason}</td>" in rows[3]


def test_the_rules_parameters_and_what_it_chose_in_each_block():
    # A Krum run, a real one kept as a fixture: its attacker a3 is left out of both rounds.
    blocks = load_chain(ROOT / "tests" / "fixtures" / "format3-krum-chain.jsonl").blocks
    page = chain_page(verify_chain(blocks), figure_png=PNG, pinned=True, source="krum.jsonl")
    assert "<td>rule</td><td>krum</td>" in page
    assert "<td>rule&#x27;s parameters</td><td>byzantine 1</td>" in page
    rows = page.split('<h2 id="blocks">', 1)[1].split("<tr>")[2:]
    for block, row in zip(blocks, rows, strict=True):
        chose = describe_choice(block)
        assert f"<td>{html.escape(chose or '—')}</td>" in row
    assert "left out a3 (score 1.7e+03)" in rows[1]
