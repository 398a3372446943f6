"""The RFC's story, played on the embedded SQLite store over simulated qcow2 storage.

Run with `python -m snapledger.adapters.demo [STORE_URL]`. Real disks come with the CLI.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from snapledger.domain.errors import SnapledgerError
from snapledger.domain.steps import Plan

from .event_store import LedgerApplication
from .service import Snapledger
from .simulated_storage import CLUSTER, SimulatedStorage


def _print_plan(title: str, plan: Plan) -> None:
    print(f"\n== {title}: {plan.strategy}")
    for step in plan.steps:
        print(f"   {step.action:14} {step}  ({step.bytes} bytes)")
    for note in plan.notes:
        print(f"   note: {note}")
    print(f"   bytes moved: {plan.bytes_moved}")


def _print_tree(ledger: Snapledger, vm_name: str) -> None:
    vm = ledger.vm(vm_name)

    def walk(parent: str | None, depth: int) -> None:
        for name in vm.children_of(parent):
            mark = " *" if name == vm.current else ""
            print(f"   {'  ' * depth}{name}{mark}  frozen: {vm.snapshots[name].disks}")
            walk(name, depth + 1)

    print(f"\n-- snapshot tree of {vm_name} (* = current); present: {vm.disks}")
    walk(None, 0)


def main(argv: list[str]) -> int:
    store = argv[1] if len(argv) > 1 else None
    with tempfile.TemporaryDirectory() as scratch:
        url = store or f"sqlite:///{Path(scratch, 'ledger.sqlite')}"
        print(f"store: {url}")
        storage = SimulatedStorage()
        base = "/images/base.qcow2"
        storage.make_image(base, 256 * CLUSTER, {c: 0x11 for c in range(64)})
        ledger = Snapledger(LedgerApplication(url), storage)
        ledger.adopt("demo", {"vda": base})
        for n, name in enumerate(["snap1", "snap2", "snap3"], start=1):
            ledger.snapshot("demo", name)
            active = ledger.vm("demo").disks["vda"]
            for cluster in range(n * 8, n * 8 + 4 * n):
                storage.write(active, cluster, 0x20 + n)
        _print_tree(ledger, "demo")
        _print_plan("revert to snap1", ledger.revert("demo", "snap1"))
        storage.write(ledger.vm("demo").disks["vda"], 100, 0x5A)  # the alternate history
        _print_tree(ledger, "demo")
        _print_plan("delete snap2 (dry run)", ledger.delete("demo", "snap2", dry_run=True))
        _print_plan("delete snap3", ledger.delete("demo", "snap3"))
        _print_plan("delete snap1 (branch point)", ledger.delete("demo", "snap1"))
        try:
            ledger.snapshot("demo", "bad name")
        except SnapledgerError as error:
            print(f"\n== bad input is refused (exit {error.exit_code}): {error}")
        _print_tree(ledger, "demo")
        print(f"\n-- files now: {sorted(storage.files)}")
        print(f"-- the ledger holds {ledger.view.position} events")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
