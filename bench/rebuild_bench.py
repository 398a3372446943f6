"""Full projection rebuild over a 1,000,000-event SQLite ledger.

    python bench/rebuild_bench.py [--db /tmp/snapledger-bench-1m.sqlite] [--events 1000000]
                                  [--repeat 3] [--fresh]

The ledger is built once (a few minutes) and cached at --db; later runs only time the rebuild.
It holds the project's real events: VMs (one or two disks, some over a template shared by the
VMs of a group) adopted, then guest writes, snapshots, reverts, deletes (commit, pull, branch
points pulled or kept), gc, disk swaps, drift findings, and injected storage failures that roll
back or are recovered, each driven through the real aggregates, planners and SimulatedStorage
(see _driver.py), and saved through LedgerApplication in large batches.

The rebuild is what `Snapledger.refresh()` does on a fresh process: a new LedgerView applying
`app.events_after(0)` (notification log -> mapper -> event -> aggregate). Target: >= 150,000 events/s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _driver import Fleet, expected_view  # noqa: E402

from snapledger.adapters.eventstore.application import LedgerApplication  # noqa: E402
from snapledger.projections.view import LedgerView  # noqa: E402

TARGET = 150_000
SAVE_EVERY = 20_000  # events per app.save()
GIB = 1 << 30


class Budget:
    """Events saved so far, events pending in the fleet, and the target."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.saved = 0

    def pending(self, fleet: Fleet) -> int:
        return sum(len(a.pending_events) for a in fleet._touched.values())  # noqa: SLF001

    def room(self, fleet: Fleet) -> int:
        return self.target - self.saved - self.pending(fleet)

    def save(self, app: LedgerApplication, fleet: Fleet) -> None:
        self.saved += len(app.save(*fleet.dirty()))


# Closing in on the target, one command could overshoot it: the last few events are drift
# findings, one event each, so that the ledger holds exactly the target.
MAX_COMMAND_EVENTS = 60


def _play_vm(fleet: Fleet, name: str, template: str | None, ops: int, budget: Budget) -> None:
    """Adopt one VM and play up to `ops` commands on it, within the budget."""
    rng, storage = fleet.rng, fleet.storage
    directory = f"/var/lib/libvirt/images/{name}"
    disks = {"vda": f"{directory}/vda.qcow2"}
    storage.make_image(disks["vda"], 20 * GIB, {c: 0x11 for c in range(8)}, backing=template)
    if rng.random() < 0.3:
        disks["vdb"] = f"{directory}/vdb.qcow2"
        storage.make_image(disks["vdb"], 4 * GIB, {0: 0x22})
    pools = [f"/srv/pool/{name}"] + ([os.path.dirname(template)] if template else [])
    fleet.adopt(name, disks, pools=pools)
    snaps: list[str] = []
    counter = 0
    for _ in range(ops):
        vm = fleet.vms[name]
        room = budget.room(fleet)
        if room < MAX_COMMAND_EVENTS:
            for _ in range(room):
                fleet.record_drift(name, vm.disks["vda"])
            return
        if budget.pending(fleet) >= SAVE_EVERY:
            return
        fleet.guest_writes(name, rng.randrange(0, 6))
        r = rng.random()
        if r < 0.50 or len(snaps) < 2:
            counter += 1
            snap = f"s{counter}"
            fail = 1 if rng.random() < 0.02 else None
            fleet.snapshot(name, snap, fail_at=fail)
            if snap in vm.snapshots:
                snaps.append(snap)
        elif r < 0.66:
            fleet.revert(name, rng.choice(snaps))
        elif r < 0.93:
            snap = rng.choice(snaps)
            fail = 1 if rng.random() < 0.03 else None
            fleet.delete(name, snap, fail_at=fail)
            snaps.remove(snap)
        elif r < 0.97:
            fleet.gc(name)
        elif r < 0.985:
            counter += 1
            new = f"{directory}/swapped-{counter}.qcow2"
            storage.make_image(new, 20 * GIB, {1: 0x33})
            fleet.swap_disk(name, "vda", new)
        else:
            fleet.record_drift(name, vm.disks["vda"])


def build(db: Path, events: int, seed: int = 20250101) -> dict[str, int]:
    """Play VMs in groups sharing a template until the ledger file holds exactly `events` events."""
    tmp = db.with_name(db.name + ".building")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    app = LedgerApplication(f"sqlite:///{tmp.resolve()}")
    counts = build_into(app, events, seed)
    del app
    os.replace(tmp, db)
    return counts


def build_into(app: LedgerApplication, events: int, seed: int = 20250101) -> dict[str, int]:
    """Play VMs in groups sharing a template until the (empty) ledger holds exactly `events`
    events, and check that they replay to the driver's state."""
    rng = random.Random(seed)
    budget = Budget(events)
    fleets: list[Fleet] = []
    group = 0
    started = time.perf_counter()
    while budget.saved < events:
        group += 1
        fleet = Fleet(rng)
        fleets.append(fleet)
        template = None
        if rng.random() < 0.7:
            template = f"/var/lib/libvirt/templates/group{group}.raw"
            fleet.storage.make_image(template, 20 * GIB, {c: 0x01 for c in range(32)}, fmt="raw")
        for n in range(rng.randrange(4, 12)):
            if budget.room(fleet) <= 0:
                break
            _play_vm(fleet, f"g{group}-vm{n}", template, rng.randrange(20, 160), budget)
            if budget.pending(fleet) >= SAVE_EVERY:
                budget.save(app, fleet)
                print(f"\r  built {budget.saved:,} events", end="", file=sys.stderr, flush=True)
        budget.save(app, fleet)
    saved = budget.saved
    print(f"\r  built {saved:,} events in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if saved != events:
        raise SystemExit(f"built {saved} events, not {events}")
    counts = Counter(type(e).__qualname__ for e, _ in app.events_after(0))
    view = LedgerView()
    view.apply_all(app.events_after(0))
    expected = expected_view(fleets, saved)
    if view.canonical() != expected.canonical():
        raise SystemExit("the rebuilt view differs from the state the driver holds: not replayable")
    return dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="/tmp/snapledger-bench-1m.sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached ledger")
    args = parser.parse_args()
    db = Path(args.db).resolve()
    if args.fresh:
        db.unlink(missing_ok=True)
    if not db.exists():
        print(f"building {args.events:,} events into {db} (once; cached)", file=sys.stderr)
        counts = build(db, args.events)
        print("event types:", ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    app = LedgerApplication(f"sqlite:///{db}")
    total = app.recorder.max_notification_id() or 0
    print(f"ledger: {db} ({total:,} events, {db.stat().st_size / 1e6:.0f} MB)")
    rates = []
    view = LedgerView()
    for run in range(1, args.repeat + 1):
        view = LedgerView()
        cpu, started = time.process_time(), time.perf_counter()
        view.apply_all(app.events_after(0))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert view.position == total
        rates.append(total / seconds)
        print(
            f"rebuild {run}: {seconds:.2f} s ({cpu:.2f} s CPU), {total / seconds:,.0f} events/s"
        )
    median = statistics.median(rates)
    print(
        f"RESULT full rebuild: median {median:,.0f} events/s, best {max(rates):,.0f} events/s "
        f"({len(view.vms):,} VMs, {len(view.registrations):,} images) "
        f"target >= {TARGET:,}: {'MET' if median >= TARGET else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
