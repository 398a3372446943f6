"""docs/api.md's session, run as it stands on a scratch SQLite store and a real qcow2 image; and
the API returns what the command line prints with --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, make_image

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_session_in_docs_api_md_runs(tmp_path: Path) -> None:
    blocks = python_blocks((ROOT / "docs" / "api.md").read_text())
    session = next(b for b in blocks if "$STORE" in b)
    disk = make_image(str(tmp_path / "web.qcow2"), 16 * CLUSTER, {0: 0x11})
    store = f"sqlite:///{tmp_path}/ledger.sqlite"
    script = session.replace("$STORE", store).replace("$DISK", str(disk))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SNAPLEDGER_STORE", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prune would delete" in done.stdout
    assert done.stdout.strip().endswith("2 no VM named 'no-such-vm' in the ledger")
    events = [e["type"] for e in Cli(tmp_path).json("log", "web")]
    assert sum(t.endswith("SnapshotTaken") for t in events) == 3
    recorded = Cli(tmp_path).json("log", "web")[-1]
    assert recorded["actor"] == "docs"


def test_the_api_returns_what_the_command_line_prints(tmp_path: Path) -> None:
    import snapledger

    cli = Cli(tmp_path)
    disk = make_image(cli.path("web.qcow2"), 16 * CLUSTER, {0: 0x11})
    cli.run("adopt", "web", "--disk", f"vda={disk}")
    cli.run("snapshot", "web", "s1")
    cli.run("snapshot", "web", "s2")
    with snapledger.open(cli.env["SNAPLEDGER_STORE"]) as ledger:
        assert ledger.show("web") == cli.json("show", "web")
        assert ledger.list() == cli.json("list")
        assert ledger.log() == cli.json("log")
        assert ledger.delete("web", "s1", dry_run=True) == cli.json("delete", "web", "s1", "--dry-run")
        assert ledger.prune("web", keep_last=1, dry_run=True) == cli.json(
            "prune", "web", "--keep-last", "1", "--dry-run")
        verified = ledger.verify()
        assert verified == cli.json("verify") and verified["ok"]


def test_reading_creates_nothing_and_bad_input_is_raised(tmp_path: Path) -> None:
    import snapledger
    from snapledger.domain.errors import BadInput, BadStoreUrl, UnknownVm

    store = tmp_path / "nothing" / "ledger.sqlite"
    with snapledger.open(f"sqlite:///{store}") as ledger:
        assert ledger.list() == [] and ledger.log() == []
        assert ledger.verify()["ok"]
        with pytest.raises(UnknownVm):
            ledger.show("web")
        with pytest.raises(BadInput):
            ledger.delete("web", "s1", strategy="sideways")
    assert not store.parent.exists()
    with pytest.raises(BadStoreUrl):
        snapledger.open("mysql://nope")
    assert json.dumps(snapledger.__version__) == '"0.1.0"'
