"""Whole commands through the service on one long-lived VM: snapshot, then delete that snapshot.

    python bench/command_bench.py [--snapshots 2000] [--repeat 7]

The VM is plan_bench.py's (built in memory over SimulatedStorage, reverts every few snapshots);
then `ledger_service(app, storage)` takes a snapshot and deletes it again, --repeat times. Each
command is timed whole, as the CLI would run it after its imports: load the VM, refresh the
view, plan, record the intent, carry out and record every step, close, save the projection.
What grows with the VM's history (its events) and what grows with its state (its snapshots and
images) is what this shows; the disks are simulated, so no byte is moved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_bench import build  # noqa: E402

from snapledger.adapters.compose import ledger_service  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    app, fleet, name = build(args.snapshots, 1, args.seed)
    ledger = ledger_service(app, fleet.storage)
    ledger.refresh()  # the first fold of the whole ledger is not what is measured
    timings: dict[str, list[tuple[float, float]]] = {"snapshot": [], "delete": []}
    in_scan: dict[str, list[float]] = {"snapshot": [], "delete": []}
    scanning = [0.0]  # wall ms in the simulated storage's scans (the world's part, not ours)
    real_scan = fleet.storage.scan

    def timed_scan(directories: object) -> object:
        started = time.perf_counter()
        scan = real_scan(directories)  # type: ignore[arg-type]
        real_dependants_of = scan.dependants_of

        def dependants_of(images: object, known: object) -> object:
            begun = time.perf_counter()
            found = real_dependants_of(images, known)  # type: ignore[arg-type]
            scanning[0] += (time.perf_counter() - begun) * 1000
            return found

        scan.dependants_of = dependants_of  # type: ignore[method-assign]
        scanning[0] += (time.perf_counter() - started) * 1000
        return scan

    fleet.storage.scan = timed_scan  # type: ignore[method-assign]
    steps = 0
    for n in range(args.repeat):
        snap = f"bench{n}"
        for command in ("snapshot", "delete"):
            cpu, started = time.process_time(), time.perf_counter()
            scanning[0] = 0.0
            plan = ledger.snapshot(name, snap) if command == "snapshot" else ledger.delete(name, snap)
            timings[command].append(
                ((time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000)
            )
            in_scan[command].append(scanning[0])
            if command == "delete":
                steps = len(plan.steps)
    vm = ledger.vm(name)
    print(f"VM {name}: {len(vm.snapshots):,} snapshots, {len(vm.images):,} images; "
          f"{app.last_position():,} events in the ledger")
    for command, runs in timings.items():
        wall = statistics.median(t for t, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        extra = f" ({steps} steps)" if command == "delete" else ""
        own = statistics.median(t - s for (t, _), s in zip(runs, in_scan[command], strict=True))
        print(f"  {command}{extra}: median {wall:,.0f} ms wall, {cpu:,.0f} ms CPU "
              f"over {len(runs)} runs; without the simulated storage's scans {own:,.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
