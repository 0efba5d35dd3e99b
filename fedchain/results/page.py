"""A verified chain as one self-contained HTML page: the run's settings, a row per block, each
client's privacy terms, the verdict and the convergence figure, for `blockchain.py report`.

Pure: a verified chain (and the figure's PNG bytes) in, the page's text out. Every string that
comes from the chain (names, reasons, the rule's choice) is escaped: a client's name is its own
choice, and a name such as `<script>` must show as text, not run. Nothing is loaded from outside:
no scripts, the styles inline, the figure a data: URI, and a Content-Security-Policy saying so.
"""

import base64
import html
from collections.abc import Iterable
from datetime import UTC, datetime

from fedchain.ledger.block import Block
from fedchain.ledger.chain import Chain
from fedchain.ledger.report import describe_choice
from fedchain.results.target import target_phrase

# Blocks nothing but inline styles and data: images, so even a page altered by hand loads
# nothing from the network.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
code { font-size: 12px; word-break: break-all; }
.verdict { font-size: 1.2em; font-weight: bold; }
.warning { color: #a40; }
img { max-width: 100%; height: auto; }
"""


def chain_page(chain: Chain, *, figure_png: bytes | None, pinned: bool, source: str) -> str:
    """The page for the verified CHAIN read from SOURCE (a file name, shown as given), with the
    convergence figure FIGURE_PNG (None: no round to draw); PINNED says whether the reader
    named the server key the chain was checked against."""
    genesis = chain.genesis
    title = f"Chain {genesis.hash[:12]}…: {len(chain.blocks)} blocks"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>{_text(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_text(title)}</h1>",
        f"<p>Read from <code>{_text(source)}</code>.</p>",
        '<h2 id="verdict">Verdict</h2>',
        *verdict_lines(chain, pinned=pinned),
        '<h2 id="settings">The run</h2>',
        _table(("setting", "value"), ((_text(k), v) for k, v in settings_rows(genesis))),
    ]
    if genesis.signed:
        parts += [
            '<h2 id="clients">Clients</h2>',
            _table(("client", "public key", "rows", "ε", "δ", "mechanism"), client_rows(chain)),
        ]
    parts += [
        '<h2 id="blocks">Blocks</h2>',
        _table(BLOCK_COLUMNS, (block_row(chain, block) for block in chain.blocks)),
        '<h2 id="convergence">Convergence</h2>',
        _figure(figure_png),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def verdict_lines(chain: Chain, *, pinned: bool) -> list[str]:
    """The verdict, as `verify` gives it, and whose chain it is."""
    count = f"{len(chain.blocks)} block{'s' if len(chain.blocks) != 1 else ''}"
    genesis = chain.genesis
    if not genesis.signed:
        return [
            f'<p class="verdict">valid: {count}</p>',
            '<p class="warning">format 1: unsigned, so no contribution is attributable, and '
            "anyone could have re-mined it</p>",
        ]
    planned, done = chain.planned_rounds, chain.rounds_done
    if chain.closed:
        verdict = f"valid: {count}; the run is complete ({done} of {planned} rounds)"
    else:
        verdict = f"incomplete: {count} verify, but the run planned {planned} rounds"
        verdict += f" and holds {done}"
    key = _code(genesis.run.server_key)
    if pinned:
        whose = f"<p>Signed by the server key {key}, the key the reader pinned.</p>"
    else:
        whose = (
            f'<p class="warning">Signed by the server key {key}, but no key was pinned: '
            "anyone holding some key could have made this chain.</p>"
        )
    return [f'<p class="verdict">{_text(verdict)}</p>', whose]


def settings_rows(genesis: Block) -> list[tuple[str, str]]:
    """What the genesis fixes for the whole run, as (setting in plain text, value in HTML)."""
    rows = [
        ("genesis hash", _code(genesis.hash)),
        ("started", _text(_when(genesis.timestamp))),
        ("block format", _text(str(genesis.version))),
        ("rule", _text(genesis.aggregation)),
    ]
    if genesis.parameters:
        rows.append(("rule's parameters", _text(_pairs(genesis.parameters.items()))))
    rows += [
        ("difficulty", _text(f"{genesis.difficulty} bits")),
        ("features", _text(", ".join(genesis.feature_names))),
    ]
    if genesis.targeted:
        target = genesis.run.target
        rows.append(("target", _text(target_phrase(target.column, target.unit))))
    run = genesis.run
    if run is not None:
        rows += [
            ("planned rounds", _text(str(run.rounds))),
            ("seed", _text(str(run.seed))),
            ("quorum", _text(f"at least {run.min_clients} client(s) a round")),
            ("server key", _code(run.server_key)),
            ("participants", _text(", ".join(sorted(run.participants)))),
        ]
        if run.privacy is not None:
            limit = run.privacy.max_epsilon
            rows.append(("most ε admitted", _text("no limit" if limit is None else f"{limit:g}")))
    return rows


def client_rows(chain: Chain) -> list[tuple[str, ...]]:
    """Each admitted client: its key, its rows as first recorded, and the ε, δ and mechanism it
    signed in a private run's genesis (a dash where it made no promise)."""
    run = chain.genesis.run
    statements = run.privacy.statements if run.privacy is not None else {}
    rows = []
    for name in sorted(run.participants):
        terms = statements.get(name)
        privacy = ("—", "—", "none")
        if terms is not None:
            privacy = (f"{terms.epsilon:g}", f"{terms.delta:g}", terms.mechanism)
        n_rows = chain.sample_counts.get(name)
        rows.append(
            (
                _text(name),
                _code(run.participants[name]),
                _text("—" if n_rows is None else str(n_rows)),
                *map(_text, privacy),
            )
        )
    return rows


BLOCK_COLUMNS = (
    "block",
    "clients (rows)",
    "signed by",
    "attested by",
    "left out, and why",
    "the rule's choice",
    "hash",
    "nonce",
    "time (UTC)",
)


def block_row(chain: Chain, block: Block) -> tuple[str, ...]:
    """One row of the blocks table, as HTML cells in BLOCK_COLUMNS' order."""
    kind = "genesis" if block.index == 0 else "round" if block.cli else "closing"
    clients = ", ".join(f"{c} ({block.client_model[c].n_samples})" for c in block.cli)
    if not block.signed:
        signers = "unsigned"
    else:
        signers = ", ".join(["server", *(c for c in block.cli if block.client_model[c].signed)])
    missing = "; ".join(f"{name}: {why}" for name, why in block.missing.items())
    return (
        f'<span id="block-{block.index}">{_text(f"{block.index} ({kind})")}</span>',
        _text(clients or "—"),
        _text(signers),
        _text(", ".join(chain.attesters(block.index)) or "—"),
        _text(missing or "—"),
        _text(describe_choice(block) or "—"),
        _code(block.hash),
        _text(str(block.nonce)),
        _text(_when(block.timestamp)),
    )


def figure_uri(png: bytes) -> str:
    """PNG as a data: URI, so the page carries its figure."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(png: bytes | None) -> str:
    if png is None:
        return "<p>No round yet: nothing to draw.</p>"
    alt = "the mean squared error per round, and the global model's weights per round"
    return f'<img src="{figure_uri(png)}" alt="{alt}" width="1200" height="500">'


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table of HEADER (plain text) and ROWS (cells already HTML)."""
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _text(value: str) -> str:
    return html.escape(value, quote=True)


def _code(value: str) -> str:
    return f"<code>{_text(value)}</code>"


def _pairs(items: Iterable[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in items)


def _when(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # verified, but beyond what datetime shows
        return f"timestamp {timestamp!r}"
