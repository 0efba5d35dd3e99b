"""The LICENSE file is the Apache License 2.0, whole, and the README names it."""

import hashlib

from processes import ROOT

# SHA-256 of the standard text (apache.org/licenses/LICENSE-2.0.txt) with its appendix's
# "Copyright [yyyy] [name of copyright owner]" filled in as below: any other edit changes it.
COPYRIGHT = "   Copyright 2026 The fedchain authors"
STANDARD_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_is_the_standard_apache_2_text_with_our_copyright():
    text = (ROOT / "LICENSE").read_text()
    assert COPYRIGHT in text.splitlines()
    standard = text.replace(COPYRIGHT, "   Copyright [yyyy] [name of copyright owner]")
    assert hashlib.sha256(standard.encode()).hexdigest() == STANDARD_SHA256


def test_readme_names_the_license():
    assert "Apache License 2.0, as Flower's: [LICENSE](LICENSE)" in (ROOT / "README.md").read_text()
