"""The pinned requirements and the package's own dependency list say the same thing."""

import tomllib

from processes import ROOT


def test_requirements_and_pyproject_pin_the_same_versions():
    pinned = {
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) == pinned
