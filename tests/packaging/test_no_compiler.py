"""Installing without a C compiler, and the meaning of ``FASTSESS_NO_EXTENSIONS``.

``setup.py`` and ``fastsess.cache`` read the variable with one parser
(``fastsess._env``, which ``setup.py`` loads by path); these tests check they
agree on every spelling, and build a real sdist and install it with
``CC=/bin/false`` into a fresh virtualenv.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path
from types import ModuleType

import pytest

from fastsess import _env

ROOT = Path(__file__).resolve().parents[2]
TRUE_SPELLINGS = ["1", "true", "TRUE", "Yes", "on", " On "]
FALSE_SPELLINGS = ["", "0", "false", "False", "NO", "off", " 0 "]
INVALID_SPELLINGS = ["2", "maybe", "ture", "-1"]


def load_setup_py() -> ModuleType:
    """The repository's ``setup.py`` as a module (``setup()`` only runs as ``__main__``)."""
    spec = importlib.util.spec_from_file_location("fastsess_setup_py", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcome(parser: ModuleType, raw: str | None) -> bool | str:
    env = {} if raw is None else {"FASTSESS_NO_EXTENSIONS": raw}
    try:
        return bool(parser.no_extensions(env))
    except ValueError as exc:
        assert "FASTSESS_NO_EXTENSIONS" in str(exc)
        return "error"


@pytest.mark.parametrize("raw", [None, *TRUE_SPELLINGS, *FALSE_SPELLINGS, *INVALID_SPELLINGS])
def test_parser_meaning(raw: str | None) -> None:
    expected = True if raw in TRUE_SPELLINGS else False if raw is None or raw in FALSE_SPELLINGS else "error"
    assert outcome(_env, raw) == expected


def test_setup_py_and_the_package_agree_on_every_spelling() -> None:
    setup_env = load_setup_py()._env
    for raw in [None, *TRUE_SPELLINGS, *FALSE_SPELLINGS, *INVALID_SPELLINGS]:
        assert outcome(setup_env, raw) == outcome(_env, raw), raw


@pytest.mark.parametrize("raw", TRUE_SPELLINGS)
def test_setup_py_builds_no_extension_when_disabled(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_py = load_setup_py()
    monkeypatch.setenv("FASTSESS_NO_EXTENSIONS", raw)
    assert setup_py.extensions() == []


def test_setup_py_refuses_an_unrecognised_value(monkeypatch: pytest.MonkeyPatch) -> None:
    setup_py = load_setup_py()
    monkeypatch.setenv("FASTSESS_NO_EXTENSIONS", "ture")
    with pytest.raises(SystemExit, match="FASTSESS_NO_EXTENSIONS='ture'"):
        setup_py.extensions()


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_sdist_installs_without_a_compiler(tmp_path: Path) -> None:
    """``CC=/bin/false pip install <sdist>``: a warning naming the variable, then the pure twin."""
    env = {k: v for k, v in os.environ.items() if k not in ("FASTSESS_NO_EXTENSIONS", "PYTHONPATH", "REDIS_URL")}
    venv.create(tmp_path / "venv", with_pip=True)
    bindir = tmp_path / "venv" / ("Scripts" if sys.platform == "win32" else "bin")
    python = str(bindir / "python")
    # `build` goes into the fresh venv, so the test needs nothing beyond the test extra
    tool = run([python, "-m", "pip", "install", "-q", "build>=1.2"], env, tmp_path)
    assert tool.returncode == 0, tool.stderr[-3000:]
    built = run([python, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(ROOT)], env, tmp_path)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = (tmp_path / "dist").glob("fastsess-*.tar.gz")

    installed = run([python, "-m", "pip", "install", "-v", str(sdist)], {**env, "CC": "/bin/false"}, tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    log = installed.stdout + installed.stderr
    assert "compiling fastsess._lru failed" in log  # the compiler really was tried, and failed
    assert "FASTSESS_NO_EXTENSIONS=1" in log

    probe = "import fastsess, fastsess.cache as c; print(c.IMPLEMENTATION, c.NO_EXTENSIONS, fastsess.LRUCache.__module__)"
    out = run([python, "-c", probe], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["py", "False", "fastsess._lru_py"]

    doctor = run([str(bindir / "fastsess"), "doctor"], env, tmp_path)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr  # a missing compiled core is a failed check
    assert "[FAIL] cache core" in doctor.stdout and "not built at install time" in doctor.stdout

    chosen = run([str(bindir / "fastsess"), "doctor"], {**env, "FASTSESS_NO_EXTENSIONS": "1"}, tmp_path)
    assert "pure Python (fastsess._lru_py): FASTSESS_NO_EXTENSIONS is set" in chosen.stdout
    assert "[FAIL]" not in chosen.stdout and chosen.returncode == 0, chosen.stdout + chosen.stderr
