"""The bytes a prune moves in the order it picks, against deleting the same snapshots one at a
time oldest first (issue 14), on a few layouts over simulated storage.

    python bench/prune_bench.py

Each layout is a VM with eight snapshots whose layers hold the given number of 64 KiB
clusters (the oldest first; the present's layer last); `prune --keep-last 2` deletes the six
oldest. Both orders are planned by the real planners on the same view, each deletion on the
state the ones before it leave.
"""

from __future__ import annotations

import sys

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.projections import retention

LAYOUTS = {
    "even layers (8 clusters each)": [8] * 9,
    "big old layers, small new ones": [64, 48, 32, 16, 8, 4, 2, 1, 1],
    "small old layers, big new ones": [1, 1, 2, 4, 8, 16, 32, 48, 64],
    "one big layer in the middle": [2, 2, 2, 60, 2, 2, 2, 2, 2],
}


def build(layers: list[int]) -> tuple[object, str]:
    storage = SimulatedStorage()
    base = "/images/vm/base.qcow2"
    storage.make_image(base, 1024 * CLUSTER, {})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": base})
    next_cluster = 0
    for n, clusters in enumerate(layers):
        for _ in range(clusters):
            storage.write(ledger.vm("vm").disks["vda"], next_cluster % 1024, n + 1)
            next_cluster += 1
        if n < len(layers) - 1:
            ledger.snapshot("vm", f"s{n + 1}")
    return ledger, "vm"


def main() -> int:
    print("| layout | oldest first | newest first | prune's order | order |")
    print("|---|---|---|---|---|")
    for label, layers in LAYOUTS.items():
        ledger, vm = build(layers)
        view = ledger.refresh()  # type: ignore[attr-defined]
        names = tuple(f"s{n}" for n in range(1, 7))
        oldest = retention.route(view, vm, names, "forbid")
        newest = retention.route(view, vm, tuple(reversed(names)), "forbid")
        chosen = retention.cheapest_route(view, vm, names, "forbid")
        order = " ".join(s.snapshot for s in chosen.steps)
        print(f"| {label} | {oldest.bytes_moved:,} B | {newest.bytes_moved:,} B | "
              f"{chosen.bytes_moved:,} B | {order} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
