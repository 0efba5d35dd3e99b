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


def test_flower_is_an_extra_the_base_install_does_without():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("flwr")]
    (flower,) = project["optional-dependencies"]["flower"]
    assert flower == "flwr[simulation]==1.42.0"
    # The tests run the Flower apps, so the test environment installs the same pin.
    assert flower in (ROOT / "requirements-dev.txt").read_text().splitlines()
