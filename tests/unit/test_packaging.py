"""The wheel holds every source package as snapledger.<...>, every .py file, and no bare top level.

The project is copied without build/ and *.egg-info first: setuptools packs whatever a stale
build/lib holds, which would hide a package missing from pyproject.toml (and an in-tree build
would write into the working tree).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("domain", "projections", "adapters")
SKIP = shutil.ignore_patterns(
    ".git", "build", "dist", ".venv", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "*.sqlite", "tests", "bench",
)


def test_wheel_holds_every_source_package_under_snapledger(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=SKIP)
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)],
        check=True,
        timeout=300,
    )
    (wheel,) = out.glob("snapledger-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    packages = [
        init.parent.relative_to(ROOT)
        for top in SOURCES
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    ]
    assert {p.parts[0] for p in packages} == set(SOURCES)
    for package in packages:
        assert f"snapledger/{package.as_posix()}/__init__.py" in names, package
    sources = [
        py.relative_to(ROOT).as_posix()
        for top in SOURCES
        for py in (ROOT / top).rglob("*.py")
        if "__pycache__" not in py.parts
    ]
    missing = sorted(s for s in sources if f"snapledger/{s}" not in names)
    assert missing == []
    tops = {name.split("/", 1)[0] for name in names}
    assert not tops & set(SOURCES)
    assert {t for t in tops if not t.endswith(".dist-info")} == {"snapledger"}


def test_the_version_every_event_records_is_the_packages() -> None:
    """compose.VERSION saves every process a scan of the installed metadata; it must not drift
    from pyproject.toml's (nor from what pip installed)."""
    import importlib.metadata
    import tomllib

    from snapledger.adapters.compose import VERSION

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert VERSION == declared == importlib.metadata.version("snapledger")
