"""Packaging facts that are easy to break silently: license, version, metadata, extras, CI."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastsess

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
WORKFLOW = (ROOT / ".github" / "workflows" / "wheels.yml").read_text(encoding="utf-8")


def job(name: str) -> str:
    """The text of one job of the workflow (from its key to the next job's key)."""
    match = re.search(rf"^  {re.escape(name)}:\n(.*?)(?=^  \S|\Z)", WORKFLOW, re.M | re.S)
    assert match is not None, f"no job {name!r} in wheels.yml"
    return match.group(1)


def test_license_file_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "fastsess developers" in text
    assert PYPROJECT["project"]["license"] == "MIT" and PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_version_is_defined_once() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastsess.__version__"}
    assert importlib.metadata.version("fastsess") == fastsess.__version__


def test_installed_metadata_has_urls_and_classifiers() -> None:
    meta = importlib.metadata.metadata("fastsess")
    classifiers = set(meta.get_all("Classifier") or [])
    for minor in range(10, 15):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert {"Typing :: Typed", "Operating System :: Microsoft :: Windows", "Operating System :: MacOS"} <= classifiers
    assert meta["License-Expression"] == "MIT"
    urls = {entry.split(",", 1)[0] for entry in meta.get_all("Project-URL") or []}
    assert {"Homepage", "Source", "Issues"} <= urls


def test_test_extra_holds_no_framework_the_tests_do_not_use() -> None:
    test_extra = " ".join(PYPROJECT["project"]["optional-dependencies"]["test"]).lower()
    # django, flask, starlette, Flask-Session, starsessions and django-redis are used: tests/contrib
    # tests the framework drop-ins, the migrations (Flask-Session, starsessions, Django sessions
    # cached by django-redis) and StarsessionsStore
    for name in ("cachebox", "lru-dict", "fastsess[bench]", "pytest-benchmark"):
        assert name not in test_extra, name


def test_the_library_never_imports_click() -> None:
    """click is a dependency for the `fastsess` command only (see the README's Installing section)."""
    code = (
        "import sys, fastsess, fastsess.asyncio, fastsess.stores.clustered, fastsess.asyncio.stores.clustered, "
        "fastsess.stores.memory, fastsess.serializers, fastsess.metrics, fastsess.doctor; "
        "print('click' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_cibuildwheel_config_is_accepted_by_current_cibuildwheel() -> None:
    config = PYPROJECT["tool"]["cibuildwheel"]
    assert "enable" not in config  # cibuildwheel 3 rejects "cpython-freethreading"; 3.14t builds by default
    assert "cp314t-*" in config["build"]


def test_cibuildwheel_tests_the_free_threaded_wheel_with_the_gil_off() -> None:
    """Every wheel, cp314t included, runs tests/core (whose GIL check needs the interpreter's own default)."""
    config = PYPROJECT["tool"]["cibuildwheel"]
    assert "314t" not in config.get("test-skip", "") and config.get("test-skip", "") != "*"
    assert 'python -c "import fastsess._lru"' in config["test-command"]
    assert "pytest {project}/tests/core" in config["test-command"]
    # PYTHON_GIL=0 (or -Xgil=0) would hide a core that switches the GIL back on
    assert "PYTHON_GIL" not in str(config) and "gil=" not in str(config).lower()
    assert "PYTHON_GIL" not in job("wheels") and "CIBW_" not in job("wheels")


def test_workflow_runners_lint_and_publish() -> None:
    wheels = job("wheels")
    assert "macos-13" not in wheels and "macos-15-intel" in wheels  # macos-13 runners are gone
    lint = job("lint")
    assert "run: ruff check ." in lint and "run: mypy" in lint
    publish = job("publish")
    assert "permissions:\n      id-token: write" in publish
    assert "startsWith(github.ref, 'refs/tags/v')" in publish
    assert "uses: pypa/gh-action-pypi-publish@" in publish
    assert re.search(r"needs: \[lint, wheels, sdist, tests\]", publish)
    assert "run: bash .ci/run" in job("tests")


def test_ci_script_runs_the_linters_and_both_implementations() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "\nruff check .\n" in script and "\nmypy\n" in script
    assert "compiled module fastsess._lru was not built" in script  # the normal path must compile
    assert "export FASTSESS_NO_EXTENSIONS=1" in script


def test_ci_runs_the_encryption_tests_on_the_lowest_cryptography() -> None:
    """The crypto extra's floor is the version CI installs for a second run of the encryption tests."""
    (requirement,) = PYPROJECT["project"]["optional-dependencies"]["crypto"]
    assert re.fullmatch(r"cryptography>=[0-9.]+", requirement)
    assert "fastsess[crypto]" in " ".join(PYPROJECT["project"]["optional-dependencies"]["test"])
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert '["optional-dependencies"]["crypto"]' in script and 'pip install -q "cryptography==$crypto_floor"' in script
    assert "tests/hardening/test_encryption.py tests/contract/test_encryption_contract.py" in script
