"""Hosts through the command line, on one SQLite ledger and real qcow2 files: `--host` and
SNAPLEDGER_HOST choose the host a process acts as; a VM lives on the host that adopted it, and
another host's changing commands are refused (exit 4, one line naming the home) with nothing
recorded and no file touched."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Cli
from qemu_helpers import make_image

MIB = 1 << 20


def test_a_host_changes_only_its_own_vms(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    web = make_image(tmp_path / "web.qcow2", 4 * MIB, {0: 0x11})
    db = make_image(tmp_path / "db.qcow2", 4 * MIB, {0: 0x22})
    cli.run("--host", "hosta", "adopt", "web", "--disk", f"vda={web}")
    cli.run("--host", "hosta", "snapshot", "web", "s1")
    cli.env["SNAPLEDGER_HOST"] = "hostb"  # from here on, unless --host says otherwise
    cli.run("adopt", "db", "--disk", f"vda={db}")
    assert [(r["vm"], r["host"]) for r in cli.json("list")] == [("db", "hostb"), ("web", "hosta")]
    assert [r["vm"] for r in cli.json("list", "--mine")] == ["db"]
    assert cli.json("show", "web")["host"] == "hosta"
    assert "host: hosta" in cli.run("show", "web").stdout
    before = cli.state()
    for command in (["snapshot", "web", "s2"], ["delete", "web", "s1"], ["delete", "web", "s1", "--dry-run"],
                    ["revert", "web", "s1"], ["gc", "web"], ["recover", "web"], ["verify", "web"],
                    ["reconcile", "web"], ["retire", "web"], ["swap-disk", "web", "vda", db]):
        refused = cli.run(*command, expect=4)
        assert "lives on host 'hosta'" in refused.stderr and "'hostb'" in refused.stderr
    assert cli.state() == before
    # sweeps stay home: hostb's see only db; reading works from anywhere
    assert cli.json("gc") == []
    assert cli.json("verify")["ok"]
    assert cli.json("recover")["finished"] == []
    assert cli.json("tree", "web")["current"] == "s1"
    assert any(e["host"] == "hosta" for e in cli.json("log", "web"))
    assert cli.state() == before
    cli.run("--host", "hosta", "snapshot", "web", "s2")  # its home host still may


def test_a_host_name_that_is_no_host_name_is_bad_input(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    for bad in ("a..b", "unknown", "-x"):
        done = cli.run(f"--host={bad}", "list", expect=2)
        assert "host name" in done.stderr
    cli.env["SNAPLEDGER_HOST"] = "no spaces"
    cli.run("list", expect=2)
    assert not (tmp_path / "ledger.sqlite").exists()


def test_a_shared_or_pool_directory_that_is_not_there_is_bad_input(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    web = make_image(tmp_path / "web.qcow2", 4 * MIB, {0: 0x11})
    for option, directory in (("--shared", tmp_path / "nfs-typo"), ("--pool", web)):
        done = cli.run("adopt", "web", "--disk", f"vda={web}", option, str(directory), expect=2)
        assert done.stderr == f"snapledger: error: {option} {directory}: no such directory\n"
    assert cli.json("list") == []

