"""The package as a user installs it: ``python -m build`` makes an sdist and a wheel, each
installs into a clean virtual environment and runs ``ancsync demo``. Dependencies come from the
configured package index (here, the local mirror)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import ancsync
from ancsync._version import __version__

ROOT = Path(__file__).parents[2]


def test_the_version_is_the_one_in_version_py() -> None:
    assert importlib.metadata.version("ancsync") == __version__
    assert ancsync.__version__ == __version__


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from this checkout as a release would be."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["whl", "tar.gz"], ids=["wheel", "sdist"])
def test_the_built_package_installs_and_runs_the_demo(
    kind: str, dist: Path, tmp_path: Path
) -> None:
    [package] = dist.glob(f"ancsync-{__version__}*.{kind}")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", package)
    assert run(venv / "bin" / "ancsync", "--version") == f"ancsync {__version__}\n"
    output = run(venv / "bin" / "ancsync", "demo", "--duration", "4", "--json", cwd=tmp_path)
    summary = orjson.loads(output.strip().splitlines()[-1])
    assert summary["ok"] is True, summary["problems"]
