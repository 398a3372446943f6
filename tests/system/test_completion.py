"""Shell completion (docs/completion.md) through the installed `snapledger` script: VM names and a
VM's snapshot names from the ledger, --store or SNAPLEDGER_STORE respected, nothing created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, make_image

SCRIPT = str(Path(sys.executable).with_name("snapledger"))


def complete(words: str, env: dict[str, str], shell: str = "bash") -> list[str]:
    """What the shell would offer for the last word of `words` (empty: a new word)."""
    done = subprocess.run(
        [SCRIPT],
        env={**env, "_SNAPLEDGER_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
             "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line.partition(",")[2] for line in done.stdout.splitlines() if line]


@pytest.fixture
def ledger(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path)
    for vm in ("web", "db"):
        disk = make_image(cli.path(f"{vm}.qcow2"), 16 * CLUSTER, {0: 0x11})
        cli.run("adopt", vm, "--disk", f"vda={disk}")
    for name in ("before-upgrade", "nightly", "night-2"):
        cli.run("snapshot", "web", name)
    cli.run("snapshot", "db", "dbsnap")
    return cli


def test_snapshot_names_of_the_vm_given_before(ledger: Cli) -> None:
    assert complete("snapledger delete web ", ledger.env) == ["before-upgrade", "nightly", "night-2"]
    assert complete("snapledger delete web nig", ledger.env) == ["nightly", "night-2"]
    assert complete("snapledger revert db ", ledger.env) == ["dbsnap"]
    assert complete("snapledger delete nosuchvm ", ledger.env) == []


def test_vm_names_and_the_store_on_the_command_line(ledger: Cli) -> None:
    assert complete("snapledger show ", ledger.env) == ["db", "web"]
    assert complete("snapledger prune w", ledger.env) == ["web"]
    store = ledger.env["SNAPLEDGER_STORE"]
    elsewhere = {k: v for k, v in ledger.env.items() if k != "SNAPLEDGER_STORE"}
    elsewhere["XDG_DATA_HOME"] = str(ledger.dir / "xdg")  # the default store: not there
    assert complete(f"snapledger --store {store} delete web ", elsewhere) == [
        "before-upgrade", "nightly", "night-2"]
    assert complete("snapledger delete web ", elsewhere) == []
    assert not (ledger.dir / "xdg").exists()


def test_no_ledger_no_names_and_nothing_created(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "ledger.sqlite"
    env = {**os.environ, "SNAPLEDGER_STORE": f"sqlite:///{missing}"}
    assert complete("snapledger show ", env) == []
    assert complete("snapledger delete web ", env) == []
    assert complete(f"snapledger --store sqlite:///{tmp_path}/y.sqlite delete web ", env) == []
    assert complete("snapledger --store mysql://bad delete web ", env) == []
    assert list(tmp_path.iterdir()) == []  # no directory, no file
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"not a ledger")
    env["SNAPLEDGER_STORE"] = f"sqlite:///{empty}"
    assert complete("snapledger show ", env) == []
    assert empty.read_bytes() == b"not a ledger"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_every_shell_gets_its_script(shell: str) -> None:
    done = subprocess.run(
        [SCRIPT], env={**os.environ, "_SNAPLEDGER_COMPLETE": f"{shell}_source"},
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "_SNAPLEDGER_COMPLETE" in done.stdout
