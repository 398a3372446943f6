"""The man pages (docs/cli.md, "Reference"): built from the click commands into a directory, one
for the group and one for every command, each rendered by groff (or man) without a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from snapledger.adapters.cli.main import cli


def test_every_command_has_a_page_that_renders_cleanly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "snapledger.adapters.cli.manpage", str(tmp_path / "man1")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    pages = {page.name for page in (tmp_path / "man1").iterdir()}
    assert pages == {"snapledger.1"} | {f"snapledger-{name}.1" for name in cli.commands}
    for page in sorted(pages):
        text = (tmp_path / "man1" / page).read_text()
        assert text.startswith(".TH ") and "\n.SH NAME" in text and "\n.SH SYNOPSIS" in text, page
        rendered = render(tmp_path / "man1" / page)
        assert "SYNOPSIS" in rendered and "snapledger" in rendered, page
    delete = render(tmp_path / "man1" / "snapledger-delete.1")
    assert "--dry-run" in delete and "--strategy" in delete


def render(page: Path) -> str:
    """The page as text; any warning of groff (all of them, -ww) or man fails the test."""
    env = {**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"}
    # groff is installed by .ci/setup: a missing renderer fails here, it is never skipped
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P-cbou", str(page)], capture_output=True,
                          text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0 and done.stderr == "", (page, done.stderr)
    return done.stdout.replace("\u2010", "-").replace("\u2212", "-")


def test_a_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "snapledger.adapters.cli.manpage", str(tmp_path / "file" / "man1")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("snapledger: error: ") and len(done.stderr.splitlines()) == 1
