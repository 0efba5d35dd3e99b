"""benchmark.py --write: a section's output replaces its block in a page and nothing else, under
a stamp; a page whose markers are wrong is refused before any benchmark runs. No benchmark runs
here: the sections are fakes that print a line."""

import platform

import numpy as np
import pytest

import benchmark

PAGE = """# Figures

Prose before, by hand.

<!-- benchmark:speed -->
old speed figures
<!-- /benchmark:speed -->

Prose between.

<!-- benchmark:privacy -->
old privacy figures
<!-- /benchmark:privacy -->

Prose after.
"""

FAKES = {
    "speed": lambda: print("speed: 1.0 ms\n  ratio 2.0"),
    "privacy": lambda: print("privacy: 1.0067"),
}


def test_a_section_replaces_only_its_block(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    benchmark.run_sections(["speed"], FAKES, page)
    text = page.read_text()
    assert capsys.readouterr().out == "speed: 1.0 ms\n  ratio 2.0\n"  # the terminal still sees it
    assert "old speed figures" not in text
    before, block, after = text.partition("```\nspeed: 1.0 ms\n  ratio 2.0\n```\n")
    assert block
    assert after == PAGE[PAGE.index("<!-- /benchmark:speed -->") :]
    stamp = before.splitlines()[-2]
    assert before == PAGE[: PAGE.index("<!-- benchmark:speed -->")] + (
        f"<!-- benchmark:speed -->\n{stamp}\n\n"
    )
    assert stamp.startswith("Measured 20") and " UTC on " in stamp
    for fact in (platform.platform(), f"Python {platform.python_version()}", np.__version__):
        assert fact in stamp


def test_a_rerun_replaces_the_block_it_wrote(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    benchmark.run_sections(["privacy", "privacy"], FAKES, page)
    text = page.read_text()
    assert text.count("privacy: 1.0067") == 1 and text.count("Measured ") == 1
    assert "old speed figures" in text and text.endswith("Prose after.\n")


def test_without_a_page_nothing_is_written(tmp_path, capsys):
    benchmark.run_sections(["privacy"], FAKES)
    assert capsys.readouterr().out == "privacy: 1.0067\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("page", "refusal"),
    [
        (PAGE.replace("benchmark:speed", "benchmark:sped"), "line 5: <!-- benchmark:sped -->"),
        (PAGE.replace("<!-- /benchmark:privacy -->\n", ""), "line 11: privacy's block has no end"),
        (PAGE.replace("<!-- /benchmark:speed -->\n", ""), "line 10: <!-- benchmark:privacy -->"),
        (PAGE.replace("<!-- benchmark:speed -->\n", ""), "line 6: <!-- /benchmark:speed --> ends"),
        (PAGE + PAGE[PAGE.index("<!-- benchmark:privacy") :], "a second block for privacy"),
        (PAGE.replace("privacy", "speed"), "a second block for speed"),
    ],
    ids=["unknown", "no end", "nested", "no start", "twice", "renamed twice"],
)
def test_a_page_with_wrong_markers_is_refused_before_any_section_runs(
    tmp_path, capsys, page, refusal
):
    path = tmp_path / "page.md"
    path.write_text(page)
    assert benchmark.main(["--write", str(path), "privacy"]) == benchmark.EXIT_BAD_PAGE
    shown = capsys.readouterr()
    assert shown.out == ""  # the real privacy section never started
    assert shown.err.startswith(f"benchmark.py: {path}: ") and refusal in shown.err
    assert path.read_text() == page


def test_a_section_without_a_block_is_refused(tmp_path, capsys):
    path = tmp_path / "page.md"
    path.write_text(PAGE)
    assert benchmark.main(["--write", str(path), "privacy", "mining"]) == benchmark.EXIT_BAD_PAGE
    assert "no block for mining: put <!-- benchmark:SECTION -->" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no block for quality"):
        benchmark.replace_block(PAGE, "quality", "figures", "Measured", benchmark.SECTIONS)


def test_a_missing_page_is_refused(tmp_path, capsys):
    path = tmp_path / "nowhere.md"
    assert benchmark.main(["--write", str(path), "privacy"]) == benchmark.EXIT_BAD_PAGE
    assert capsys.readouterr().err.startswith(f"benchmark.py: {path}: ")


def test_the_page_in_docs_has_a_block_for_every_section():
    text = (benchmark.HERE / "docs" / "benchmarks.md").read_text()
    benchmark.check_page(text, benchmark.SECTIONS, benchmark.SECTIONS)
