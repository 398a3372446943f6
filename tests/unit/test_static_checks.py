"""The code standard: mypy --strict over the installed package layout, and ruff over everything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_on_the_package(tmp_path: Path) -> None:
    # The three folders are one package, snapledger.*, only once installed; mirror that layout.
    package = tmp_path / "snapledger"
    package.mkdir()
    for part in ("domain", "projections", "adapters"):
        (package / part).symlink_to(ROOT / part)
    for part in ("__init__.py", "py.typed"):  # the package itself (pyproject.toml's package-dir)
        (package / part).symlink_to(ROOT / "adapters" / "toplevel" / part)
    (package / "testing").symlink_to(ROOT / "adapters" / "testing")  # snapledger.testing, the kit
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "-p", "snapledger"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    done = subprocess.run(
        [ruff, "check", "domain", "projections", "adapters", "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def installed_layout(tmp_path: Path) -> Path:
    """A copy of the package as the wheel lays it out (snapledger/__init__.py from
    adapters/toplevel/, snapledger/domain/ from domain/, ...), for import-linter: grimp takes
    only a top-level package as a root, and the editable install's snapledger is a regular
    package whose own folder (adapters/toplevel) holds none of its subpackages."""
    site = tmp_path / "site"
    package = site / "snapledger"
    skip = shutil.ignore_patterns("__pycache__", "toplevel", "testing")
    for part in ("domain", "projections", "adapters"):
        shutil.copytree(ROOT / part, package / part, ignore=skip)
    shutil.copytree(ROOT / "adapters" / "testing", package / "testing", ignore=skip)
    shutil.copy(ROOT / "adapters" / "toplevel" / "__init__.py", package / "__init__.py")
    return site


def _lint_imports(config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = {**os.environ, "PYTHONPATH": str(installed_layout(tmp_path))}
    return subprocess.run(
        [lint, str(config), "--no-cache"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_the_import_contracts_hold(tmp_path: Path) -> None:
    """pyproject.toml's [tool.importlinter] contracts: the dependency rule of docs/architecture.md."""
    done = _lint_imports(ROOT / "pyproject.toml", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_contract_the_code_breaks_is_reported_broken(tmp_path: Path) -> None:
    """The linter really reads our imports: a contract the code is known to break (projections
    do import the domain) fails, so a kept contract above means something."""
    config = (ROOT / "pyproject.toml").read_text()
    header = config[config.index("[tool.importlinter]"):config.index("[[tool.importlinter.contracts]]")]
    (tmp_path / "broken.toml").write_text(
        header
        + '[[tool.importlinter.contracts]]\nname = "projections without the domain"\n'
        + 'type = "forbidden"\nsource_modules = ["snapledger.projections"]\n'
        + 'forbidden_modules = ["snapledger.domain"]\n'
    )
    done = _lint_imports(tmp_path / "broken.toml", tmp_path)
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout + done.stderr
