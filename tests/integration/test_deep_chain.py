"""A 200-layer chain on real files: deleting snapshots from its middle and near its top keeps
every other snapshot's bytes (issue 13); read back with qemu-io, never asked of snapledger."""

from __future__ import annotations

from pathlib import Path

from qemu_helpers import CLUSTER, assert_reads, make_image, write_clusters

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.qemu_img import QemuImgStorage

DEPTH = 200
CLUSTERS = 24  # each snapshot writes one of them: later ones overwrite earlier ones' clusters


def test_a_200_layer_chain_deleted_from_the_middle_reads_back_byte_for_byte(tmp_path: Path) -> None:
    base = make_image(tmp_path / "vda.qcow2", CLUSTERS * CLUSTER, {0: 0x01})
    ledger = ledger_service(LedgerApplication(f"sqlite:///{tmp_path}/ledger.sqlite"), QemuImgStorage())
    ledger.adopt("deep", {"vda": base})
    content = {0: 0x01}
    expected: dict[str, dict[int, int]] = {}
    for n in range(1, DEPTH + 1):
        cluster, pattern = n % CLUSTERS, n % 250 + 2
        write_clusters(ledger.vm("deep").disks["vda"], {cluster: pattern})  # the guest writes
        content[cluster] = pattern
        ledger.snapshot("deep", f"s{n}")
        expected[f"s{n}"] = dict(content)
    for name in ("s100", "s199", "s2", "s150"):  # deep, near the top, near the base, and again
        ledger.delete("deep", name)
        del expected[name]
    vm = ledger.vm("deep")
    assert set(vm.snapshots) == set(expected)
    for name, clusters in expected.items():
        assert_reads(vm.snapshots[name].disks["vda"], clusters, CLUSTERS)
    assert_reads(vm.disks["vda"], content, CLUSTERS)  # the present too
    assert ledger.verify("deep") == []
