"""Space accounting on real qcow2 files: `usage`'s allocated bytes are what `qemu-img map`
reports as data in each layer (read in process or by qemu-img alike), and a snapshot's
freeable bytes are what its real delete then removes from the host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from qemu_helpers import qemu_io

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.projections.documents import vm_document
from snapledger.projections.space import VmSpace

MIB = 1 << 20
VM = "vm"


def layer_data(path: str) -> int:
    """Bytes `qemu-img map` reports as data in this layer itself (depth 0)."""
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", path],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return sum(e["length"] for e in json.loads(out) if e["data"] and e["depth"] == 0)


def history(tmp_path: Path, read_in_process: bool = True) -> Snapledger:
    """base (1 MiB of 0xab, frozen by s1) <- 2 MiB of 0xcd (frozen by s2) <- 1 MiB of 0xef
    (frozen by s3) <- the present (512 KiB of 0x12)."""
    base = str(tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True, timeout=60)
    qemu_io(base, ["write -P 0xab 0 1M"])
    ledger = ledger_service(LedgerApplication("memory:"), QemuImgStorage(read_in_process=read_in_process))
    ledger.adopt(VM, {"vda": base})
    for name, write in (("s1", "write -P 0xcd 1M 2M"), ("s2", "write -P 0xef 8M 1M"),
                        ("s3", "write -P 0x12 16M 512k")):
        ledger.snapshot(VM, name)
        qemu_io(ledger.vm(VM).disks["vda"], [write])
    return ledger


def only(ledger: Snapledger) -> VmSpace:
    (space,) = ledger.usage(VM)
    return space


@pytest.mark.parametrize("read_in_process", [True, False], ids=["in-process", "qemu-img"])
def test_allocated_is_what_qemu_img_map_reports(tmp_path: Path, read_in_process: bool) -> None:
    ledger = history(tmp_path, read_in_process)
    space = only(ledger)
    assert len(space.images) == 4
    for image in space.images:
        assert image.measured and image.allocated == layer_data(image.path)
        assert image.size == os.stat(image.path).st_size
    sizes = {snap.name: snap.allocated for snap in space.snapshots}
    assert sizes == {"s1": 1 * MIB, "s2": 2 * MIB, "s3": 1 * MIB}  # the data each one froze
    assert space.allocated == 1 * MIB + 2 * MIB + 1 * MIB + MIB // 2
    # show --json's sizes are the recorded ones: the same for frozen images
    assert {s["name"]: s["allocated"] for s in vm_document(ledger.refresh(), VM)["snapshots"]} == sizes


@pytest.mark.parametrize("name", ["s1", "s2", "s3"])
def test_freeable_is_what_a_real_delete_frees(tmp_path: Path, name: str) -> None:
    ledger = history(tmp_path)
    snap = next(s for s in only(ledger).snapshots if s.name == name)
    files = {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.suffix != ".sqlite"}
    done = ledger.deletion(VM, name)
    gone = {n: size for n, size in files.items() if not (tmp_path / n).exists()}
    assert gone, "the delete removed no file"
    assert snap.freeable == done.bytes_freed == sum(gone.values())
    assert snap.moves == done.plan.bytes_moved


def test_a_delete_that_moves_nothing_still_frees_its_file(tmp_path: Path) -> None:
    ledger = history(tmp_path)
    ledger.revert(VM, "s2")  # s3's frozen layer (1 MiB of 0xef) is nobody else's now
    dry = ledger.deletion(VM, "s3", dry_run=True)
    assert dry.plan.bytes_moved == 0 and dry.bytes_freed > 1 * MIB
    frozen = ledger.vm(VM).snapshots["s3"].disks["vda"]
    size = os.stat(frozen).st_size
    assert ledger.deletion(VM, "s3").bytes_freed == dry.bytes_freed == size
    assert not os.path.exists(frozen)
