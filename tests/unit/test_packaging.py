"""The wheel holds every source package as snapledger.<...>, every .py file, and no bare top level;
the package snapledger itself is adapters/toplevel/, and both the wheel and the editable install
import every subpackage.

The project is copied without build/ and *.egg-info first: setuptools packs whatever a stale
build/lib holds, which would hide a package missing from pyproject.toml (and an in-tree build
would write into the working tree).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("domain", "projections", "adapters")
TOPLEVEL = "adapters/toplevel"  # the package snapledger itself (pyproject.toml's package-dir)
KIT = "adapters/testing"  # snapledger.testing, the test kit (snapledger[testing])
SKIP = shutil.ignore_patterns(
    ".git", "build", "dist", ".venv", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "*.sqlite", "tests", "bench",
)


def in_wheel(source: str) -> str:
    """Where a file of the checkout lies in the wheel."""
    if source.startswith(TOPLEVEL + "/"):
        return "snapledger/" + source.removeprefix(TOPLEVEL + "/")
    if source.startswith(KIT + "/"):
        return "snapledger/testing/" + source.removeprefix(KIT + "/")
    return f"snapledger/{source}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("wheel")
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=SKIP)
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("snapledger-*.whl")
    return built


def test_wheel_holds_every_source_package_under_snapledger(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    packages = [
        init.parent.relative_to(ROOT)
        for top in SOURCES
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    ]
    assert {p.parts[0] for p in packages} == set(SOURCES)
    for package in packages:
        assert in_wheel(f"{package.as_posix()}/__init__.py") in names, package
    sources = [
        py.relative_to(ROOT).as_posix()
        for top in SOURCES
        for py in (ROOT / top).rglob("*.py")
        if "__pycache__" not in py.parts
    ]
    missing = sorted(s for s in sources if in_wheel(s) not in names)
    assert missing == []
    assert "snapledger/__init__.py" in names and "snapledger/py.typed" in names
    assert not any(name.startswith("snapledger/adapters/toplevel") for name in names)
    assert not any(name.startswith("snapledger/adapters/testing") for name in names)
    assert "snapledger/testing/py.typed" in names
    tops = {name.split("/", 1)[0] for name in names}
    assert not tops & set(SOURCES)
    assert {t for t in tops if not t.endswith(".dist-info")} == {"snapledger"}


IMPORT_EVERY_PACKAGE = """
import json, sys, snapledger
lazy = "snapledger.adapters.api" not in sys.modules and "snapledger.adapters.compose" not in sys.modules
import snapledger.domain, snapledger.projections, snapledger.adapters, snapledger.adapters.cli.main
import snapledger.adapters.service, snapledger.adapters.eventstore, snapledger.adapters.checkpoint
import snapledger.adapters.storage, snapledger.adapters.host, snapledger.adapters.libvirt
import snapledger.testing, snapledger.testing.plugin, snapledger.testing.machine
files = {name: module.__file__ for name, module in sys.modules.items()
         if name == "snapledger" or name.startswith("snapledger.")}
print(json.dumps({"lazy": lazy, "version": snapledger.__version__,
                  "open": snapledger.open.__module__, "files": files}))
"""


def imported(python: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [python, "-c", IMPORT_EVERY_PACKAGE], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_the_wheel_imports_every_package_from_itself(wheel: Path, tmp_path: Path) -> None:
    """The wheel unpacked and put first on the path: snapledger and every subpackage come from
    it (not from the editable install this test runs in), and `import snapledger` is lazy."""
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    found = imported(sys.executable, tmp_path, {**os.environ, "PYTHONPATH": str(unpacked)})
    assert found["lazy"] is True and found["version"] == "0.1.0"
    assert found["open"] == "snapledger.adapters.api"
    assert "snapledger.adapters.testing" not in found["files"]  # type: ignore[operator]
    files = found["files"]
    assert isinstance(files, dict) and len(files) > 20
    assert all(str(f).startswith(str(unpacked)) for f in files.values() if f), files


def test_the_editable_install_imports_every_package_from_the_checkout(tmp_path: Path) -> None:
    found = imported(sys.executable, tmp_path)
    files = found["files"]
    assert isinstance(files, dict)
    assert files["snapledger"] == str(ROOT / TOPLEVEL / "__init__.py")
    assert all(str(f).startswith(str(ROOT)) for f in files.values() if f), files


def test_version_is_snapledger_x_y_z() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "snapledger.adapters.cli", "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout == "snapledger 0.1.0\n"


def test_the_version_every_event_records_is_the_packages() -> None:
    """VERSION saves every process a scan of the installed metadata; it must not drift
    from pyproject.toml's (nor from what pip installed)."""
    import importlib.metadata
    import tomllib

    import snapledger
    from snapledger.adapters.version import VERSION

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert VERSION == declared == importlib.metadata.version("snapledger") == snapledger.__version__


def test_the_test_kit_is_an_extra_and_a_pytest_plugin() -> None:
    """`snapledger[testing]` brings hypothesis; pytest finds the plugin by its entry point."""
    import importlib.metadata

    dist = importlib.metadata.distribution("snapledger")
    requires = dist.requires or []
    assert any(r.startswith("hypothesis") and 'extra == "testing"' in r for r in requires), requires
    plugins = [e for e in dist.entry_points if e.group == "pytest11"]
    assert [(e.name, e.value) for e in plugins] == [("snapledger", "snapledger.testing.plugin")]


def test_the_readme_shows_the_command_ci_runs() -> None:
    """.ci/run runs "the README's test command": the two must stay the same line."""
    run = (ROOT / ".ci" / "run").read_text().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    setup_block = readme.split("```sh\n")[2].split("```")[0].splitlines()
    assert run in setup_block
    assert readme.split("```sh\n")[1].startswith("pip install 'snapledger[libvirt,postgres]'")
