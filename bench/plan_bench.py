"""Planner latency on one VM with 10,000 snapshots spread over many branches.

    python bench/plan_bench.py [--snapshots 10000] [--disks 1] [--repeat 21]

The VM is built in memory (store URL "memory:"): adopted with --disks disks (vda over a
template), then guest writes and snapshots, with a revert to a random earlier snapshot every
few snapshots, so that alternate histories branch off all over the tree. It is driven through
the real aggregates, planners and SimulatedStorage (see _driver.py), saved through
LedgerApplication("memory:"), and the view the planners get is a LedgerView rebuilt from the
store, as the service's is.

Each planner call is timed as the service makes it, `taken` included (the set of every path the
ledger ever used, built per call from the view, as Snapledger._taken does); the figure is the
median of --repeat calls. Target: <= 20 ms per plan.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _driver import Fleet  # noqa: E402

from snapledger.adapters.eventstore.application import LedgerApplication  # noqa: E402
from snapledger.domain.errors import BranchPointRefused  # noqa: E402
from snapledger.domain.vm import VirtualMachine  # noqa: E402
from snapledger.projections import planners  # noqa: E402
from snapledger.projections.view import LedgerView, replacing  # noqa: E402

TARGET_MS = 20.0
GIB = 1 << 30


def build(snapshots: int, disks: int, seed: int) -> tuple[LedgerApplication, Fleet, str]:
    rng = random.Random(seed)
    app = LedgerApplication("memory:")
    fleet = Fleet(rng)
    storage = fleet.storage
    name = "big"
    template = "/var/lib/libvirt/templates/base.raw"
    storage.make_image(template, 20 * GIB, {c: 1 for c in range(64)}, fmt="raw")
    paths = {}
    for i in range(disks):
        target = "vd" + "abcdefgh"[i]
        paths[target] = f"/var/lib/libvirt/images/{name}/{target}.qcow2"
        storage.make_image(paths[target], 20 * GIB, {0: 2}, backing=template if i == 0 else None)
    fleet.adopt(name, paths, pools=[os.path.dirname(template)])
    taken = 0
    names: list[str] = []
    started = time.perf_counter()
    while taken < snapshots:
        fleet.guest_writes(name, rng.randrange(1, 4))
        if names and rng.random() < 0.08:
            fleet.revert(name, rng.choice(names))  # a new branch grows from there
            continue
        taken += 1
        fleet.snapshot(name, f"s{taken}")
        names.append(f"s{taken}")
        if taken % 500 == 0:
            app.save(*fleet.dirty())
            print(f"\r  {taken:,} snapshots", end="", file=sys.stderr, flush=True)
    app.save(*fleet.dirty())
    print(f"\r  {taken:,} snapshots in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return app, fleet, name


def pick(vm: VirtualMachine, rng: random.Random) -> dict[str, str]:
    """A leaf, a single-child middle snapshot and a branch point, each deep in the tree."""
    children: dict[str | None, list[str]] = {}
    for snap in vm.snapshots.values():
        children.setdefault(snap.parent, []).append(snap.name)
    depth: dict[str, int] = {}
    stack = [(c, 1) for c in children.get(None, [])]
    while stack:
        snap, d = stack.pop()
        depth[snap] = d
        stack.extend((c, d + 1) for c in children.get(snap, []))

    def deepest(candidates: list[str]) -> str:
        candidates.sort(key=lambda s: (-depth[s], s))
        return candidates[len(candidates) // 10]  # deep, not the very deepest

    names = sorted(vm.snapshots)
    leaves = [s for s in names if not children.get(s) and s != vm.current]
    middles = [s for s in names if len(children.get(s, [])) == 1]
    branch_points = [s for s in names if len(children.get(s, [])) >= 2]
    return {
        "leaf": deepest(leaves),
        "middle": deepest(middles),
        "branch": deepest(branch_points),
        "revert": rng.choice(names),
    }


def timed(call: Callable[[], object], repeat: int) -> tuple[float, float, float, object]:
    """Median and best wall ms, median CPU ms, and the last result."""
    times, cpu_times = [], []
    result = None
    for _ in range(repeat):
        cpu, started = time.process_time(), time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
        cpu_times.append((time.process_time() - cpu) * 1000)
    return statistics.median(times), min(times), statistics.median(cpu_times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=10_000)
    parser.add_argument("--disks", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    app, fleet, vm_name = build(args.snapshots, args.disks, args.seed)
    view = LedgerView()
    view.apply_all(app.events_after(0))
    vm = view.vms[vm_name]
    storage = fleet.storage
    kids: dict[str | None, int] = {}
    for snap in vm.snapshots.values():
        kids[snap.parent] = kids.get(snap.parent, 0) + 1
    print(
        f"VM {vm_name}: {len(vm.snapshots):,} snapshots, "
        f"{sum(1 for n in kids.values() if n >= 2):,} branch points, {len(vm.images):,} images, "
        f"{len(vm.disks)} disks; {view.position:,} events; current {vm.current}"
    )
    targets = pick(vm, random.Random(args.seed))

    def taken(on: LedgerView) -> Callable[[str], bool]:  # as Snapledger._taken builds it
        return lambda path: on.ever_used(path) or storage.exists(path)

    def planner_calls(fresh: bool) -> list[tuple[str, Callable[[], object]]]:
        """Each call plans on `replacing(view, vm)`: a new view holding the VM, as the service's
        _prepare gives every command (so nothing derived from an earlier call is reused), or,
        with fresh=False, on the one view again (its ImageDag is then built once)."""

        def on() -> LedgerView:
            return replacing(view, vm) if fresh else view

        return [
            (f"plan_delete leaf ({targets['leaf']})",
             lambda: planners.plan_delete(on(), vm_name, targets["leaf"])),
            (f"plan_delete single-child middle ({targets['middle']})",
             lambda: planners.plan_delete(on(), vm_name, targets["middle"])),
            (f"plan_delete branch point, --branches pull ({targets['branch']})",
             lambda: planners.plan_delete(on(), vm_name, targets["branch"], branches="pull")),
            (f"plan_delete branch point, refused ({targets['branch']})",
             lambda: _refused(on(), vm_name, targets["branch"])),
            (f"plan_revert ({targets['revert']})",
             lambda: (lambda v: planners.plan_revert(v, vm_name, targets["revert"], taken(v)))(on())),
            ("plan_snapshot (new)",
             lambda: (lambda v: planners.plan_snapshot(v, vm_name, "new-one", taken(v)))(on())),
        ]

    worst = {}
    for fresh in (True, False):
        print("as the service plans (a new view per command):" if fresh
              else "planning again on the same, unchanged view (ImageDag built once):")
        worst[fresh] = 0.0
        for label, call in planner_calls(fresh):
            median, best, cpu, plan = timed(call, args.repeat)
            worst[fresh] = max(worst[fresh], median)
            what = getattr(plan, "strategy", plan)
            print(
                f"  {label:56} median {median:7.2f} ms (CPU {cpu:6.2f})  best {best:7.2f} ms"
                f"  [{what}]"[:170]
            )
    print(
        f"RESULT planners on {len(vm.snapshots):,} snapshots: slowest median {worst[True]:.2f} ms "
        f"per command (new view), {worst[False]:.2f} ms on an unchanged view; "
        f"target <= {TARGET_MS:.0f} ms: {'MET' if worst[True] <= TARGET_MS else 'MISSED'} per command, "
        f"{'MET' if worst[False] <= TARGET_MS else 'MISSED'} on an unchanged view"
    )
    return 0


def _refused(view: LedgerView, vm_name: str, snapshot: str) -> str:
    try:
        planners.plan_delete(view, vm_name, snapshot)
    except BranchPointRefused as refusal:
        return f"refused: {str(refusal)[:60]}..."
    raise AssertionError("a branch point was not refused")


if __name__ == "__main__":
    sys.exit(main())
