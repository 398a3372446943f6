"""Rotation (issue 13): an hourly snapshot and the delete of the oldest, keeping 24, cycle after
cycle on one VM; the cost of a cycle as the ledger's history grows while the VM's state does not.

    python bench/rotation_bench.py [--cycles 8760] [--store sqlite] [--at 25,100,300,1000,...]

In process: one long-lived `ledger_service` over SimulatedStorage on a SQLite ledger file (or
`--store memory`): no interpreter start and no qemu-img, only snapledger's own work. At each
cycle named by --at, `--sample` cycles are timed (wall and CPU, medians); the ratio of the last
sample to the one at cycle 25 is the figure issue 13 asks for (≤ 1.2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage

KEEP = 24
VM = "rot"
DISK = "/var/lib/libvirt/images/rot/vda.qcow2"


def cycle(ledger: Snapledger, storage: SimulatedStorage, n: int) -> None:
    """Hour n: the guest writes, a snapshot h<n> is taken, the oldest beyond KEEP goes."""
    storage.write(ledger.view.vms[VM].disks["vda"], n % 16, n % 251 + 1)
    ledger.snapshot(VM, f"h{n}")
    if n > KEEP:
        ledger.delete(VM, f"h{n - KEEP}")


def in_process(args: argparse.Namespace, directory: Path) -> list[tuple[int, float, float, int]]:
    url = "memory:" if args.store == "memory" else f"sqlite:///{directory}/ledger.sqlite"
    storage = SimulatedStorage()
    storage.make_image(DISK, 64 * CLUSTER, {0: 1})
    ledger = ledger_service(LedgerApplication(url), storage)
    ledger.adopt(VM, {"vda": DISK})
    marks = sorted(int(a) for a in args.at.split(",") if int(a) <= args.cycles)
    results: list[tuple[int, float, float, int]] = []
    n = 0
    started = time.perf_counter()
    for mark in marks:
        while n + 1 < mark:
            n += 1
            cycle(ledger, storage, n)
        walls, cpus = [], []
        for _ in range(args.sample):
            n += 1
            cpu, wall = time.process_time(), time.perf_counter()
            cycle(ledger, storage, n)
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        events = ledger.last_position()
        results.append((n, statistics.median(walls), statistics.median(cpus), events))
        print(f"cycle {n:>6,}: {events:>9,} events, {results[-1][1]:7.1f} ms wall, "
              f"{results[-1][2]:7.1f} ms CPU per cycle  ({time.perf_counter() - started:,.0f} s)",
              flush=True)
    ledger.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=8_760)
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--at", default="25,100,300,1000,3000,8760")
    parser.add_argument("--sample", type=int, default=5)
    parser.add_argument("--dir", default=None, help="keep the ledger here (default: a scratch dir)")
    args = parser.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="rotation-"))
    directory.mkdir(parents=True, exist_ok=True)
    results = in_process(args, directory)
    first = next((r for r in results if r[0] >= 25), results[0])
    last = results[-1]
    print(f"\nin process, {args.store}: cycle {last[0]:,} / cycle {first[0]:,} = "
          f"{last[1] / first[1]:.2f} wall, {last[2] / first[2]:.2f} CPU (target <= 1.2)")
    print(f"ledger: {directory}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SNAPLEDGER_HOST", "bench")
    sys.exit(main())
