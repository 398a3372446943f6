"""A broken environment is one line on stderr, never a traceback.

Every case runs the real command line in a process of its own, with a HOME of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "snapledger.adapters.cli"]


class Run:
    """One `snapledger` run: exit code, stdout and stderr (bytes, and as text)."""

    def __init__(self, done: subprocess.CompletedProcess[bytes]) -> None:
        self.code = done.returncode
        self.out_bytes, self.err_bytes = done.stdout, done.stderr
        self.out = done.stdout.decode("utf-8", "surrogateescape")
        self.err = done.stderr.decode("utf-8", "surrogateescape")


def snapledger(*args: str | bytes, env: Mapping[str, str | bytes]) -> Run:
    argv = [os.fsencode(a) for a in [*CLI, *args]]
    return Run(subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False))  # type: ignore[arg-type]


def fails(run: Run, code: int, *words: str) -> str:
    """The run failed with `code` and said so in one line naming `words`; that line."""
    assert run.code == code, (run.code, run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapledger: error: "), run.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | bytes]:
    """The environment of a user whose HOME holds nothing yet."""
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SNAPLEDGER_") and k not in ("XDG_DATA_HOME", "PYTHONPATH")}
    return {**clean, "HOME": str(home), "LC_ALL": "C.UTF-8"}


def everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


# ---- 1. store URLs -----------------------------------------------------------------------------

MALFORMED = ["sqlite:////", "sqlite:////tmp/a%00b",
             "postgresql://u@127.0.0.1:99999/db", "postgresql://u@127.0.0.1:http/db", "",
             "sqlite://no-third-slash", "mysql://u@h/db", "sqlite:////tmp/mode=memory.sqlite"]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_store_url_is_one_line_exit_2(url: str, env: dict[str, str | bytes], tmp_path: Path) -> None:
    for command in (["list"], ["show", "vm", "--json"], ["verify"], ["adopt", "vm", "--disk", "vda=/tmp/x.qcow2"]):
        fails(snapledger("--store", url, *command, env=env), 2, "store")
    fails(snapledger("list", env={**env, "SNAPLEDGER_STORE": url or "sqlite:///"}), 2, "store")
    assert everything_under(tmp_path / "home") == []  # --store '' never meant the default store


def test_a_bad_url_never_shows_its_password(env: dict[str, str | bytes]) -> None:
    line = fails(snapledger("--store", "postgresql://u:s3cret@h:99999/db", "list", env=env), 2)
    assert "s3cret" not in line and "***" in line
