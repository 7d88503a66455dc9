"""The package as installed: one version from Cargo.toml, full metadata, and, under .ci/run,
the manylinux wheel installed in a fresh venv rather than the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import TIMEOUT

import dicom_inlet
from dicom_inlet import _core

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def cargo_version() -> str:
    with open(REPO / "Cargo.toml", "rb") as file:
        return str(tomllib.load(file)["package"]["version"])


def test_one_version_from_cargo_toml():
    version = cargo_version()
    assert dicom_inlet.__version__ == version
    assert metadata.version("dicom-inlet") == version
    name = dicom_inlet.IMPLEMENTATION_VERSION_NAME
    assert name == f"DCMINLET_{version}"
    result = subprocess.run(
        [sys.executable, "-m", "dicom_inlet", "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert result.stdout.strip() == f"dicom-inlet {version}"


def test_metadata_names_license_urls_pythons_and_os():
    meta = metadata.metadata("dicom-inlet")
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    for minor in range(10, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "PEP 639: expression only"
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Repository"} <= set(urls)
    assert meta["Requires-Python"] == ">=3.10"
    files = metadata.files("dicom-inlet") or []
    assert any(f.name == "LICENSE" for f in files)
    assert "MIT License" in (REPO / "LICENSE").read_text()


@pytest.mark.skipif(
    not os.environ.get("DICOM_INLET_TEST_INSTALLED_WHEEL"),
    reason="only under .ci/run, which installs the wheel into a fresh venv",
)
def test_tests_run_against_the_installed_manylinux_wheel():
    package = Path(dicom_inlet.__file__).resolve()
    native = Path(_core.__file__ or "").resolve()
    for module in (package, native):
        assert REPO not in module.parents, f"{module} is the source tree, not the wheel"
        assert "site-packages" in module.parts
    tags = metadata.distribution("dicom-inlet").read_text("WHEEL") or ""
    assert "Tag: cp310-abi3-manylinux_2_17_x86_64" in tags or "manylinux2014" in tags, tags
