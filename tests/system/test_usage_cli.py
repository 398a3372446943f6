"""`snapledger usage [VM]` and the bytes `delete --dry-run` frees, end to end on real files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import qemu_io


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def two_snapshots(cli: Cli, vm: str = "vm") -> None:
    """`vm` over its own base (1 MiB), with s1 and s2 (2 MiB more) frozen."""
    base = cli.path(f"{vm}.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True, timeout=60)
    qemu_io(base, ["write -P 0xab 0 1M"])
    cli.run("adopt", vm, "--disk", f"vda={base}")
    cli.run("snapshot", vm, "s1")
    qemu_io(cli.json("show", vm)["disks"]["vda"]["active"], ["write -P 0xcd 1M 2M"])
    cli.run("snapshot", vm, "s2")


def test_usage_json_has_the_contract_keys_for_every_vm(cli: Cli) -> None:
    two_snapshots(cli, "a")
    two_snapshots(cli, "b")
    everything = cli.json("usage")
    assert [vm["vm"] for vm in everything["vms"]] == ["a", "b"]
    (one,) = cli.json("usage", "a")["vms"]
    assert one == everything["vms"][0]
    assert {"vm", "allocated", "snapshots", "images"} <= set(one)
    assert all({"name", "allocated", "freeable"} <= set(s) for s in one["snapshots"])
    assert all({"path", "owner", "allocated"} <= set(i) for i in one["images"])
    assert {s["name"]: s["allocated"] for s in one["snapshots"]} == {"s1": 1 << 20, "s2": 2 << 20}
    assert one["allocated"] == sum(i["allocated"] for i in one["images"]) == 3 << 20
    owners = {os.path.basename(i["path"]): i["owner"] for i in one["images"]}
    assert owners == {"a.qcow2": "adopted", "a.s1": "managed", "a.s2": "managed"}
    shown = {s["name"]: s["allocated"] for s in cli.json("show", "a")["snapshots"]}
    assert shown == {"s1": 1 << 20, "s2": 2 << 20}  # show --json: the recorded sizes, the same


def test_usage_for_people_fits_80_columns_in_human_units(cli: Cli) -> None:
    two_snapshots(cli)
    cli.env["COLUMNS"] = "80"
    out = cli.run("usage", "vm").stdout
    assert "allocated: 3.1 MB" in out and "2.1 MB" in out and "1.0 MB" in out
    assert "vm.s1" in out and "managed" in out and "adopted" in out
    lines = out.splitlines()
    assert lines and max(len(line) for line in lines if str(cli.dir) not in line) <= 80


def test_usage_of_an_unknown_vm_is_bad_input(cli: Cli) -> None:
    two_snapshots(cli)
    cli.run("usage", "ghost", expect=2)


def test_delete_dry_run_says_what_it_would_free_as_well_as_move(cli: Cli) -> None:
    two_snapshots(cli)
    cli.run("revert", "vm", "s1")  # s2's 2 MiB are its frozen image's alone now
    dry = cli.json("delete", "vm", "s2", "--dry-run")
    (freeable,) = [s["freeable"] for s in cli.json("usage", "vm")["vms"][0]["snapshots"] if s["name"] == "s2"]
    assert dry["bytes_moved"] == 0 and dry["bytes_freed"] == freeable > 2 << 20
    out = cli.run("delete", "vm", "s2", "--dry-run").stdout
    assert "would move 0 bytes" in out and "would free 2.4 MB" in out
    before = {p.name: p.stat().st_size for p in cli.dir.iterdir() if p.suffix != ".sqlite"}
    done = json.loads(cli.run("delete", "vm", "s2", "--json").stdout)
    gone = [name for name in before if not (cli.dir / name).exists()]
    assert done["bytes_freed"] == sum(before[name] for name in gone) == freeable
