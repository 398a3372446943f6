"""Snapshot deletion on real qcow2 images: bytes moved and merge time against plain qemu-img.

    python bench/merge_bench.py [--dir /tmp/snapledger-merge-bench] [--repeat 3] [--skip-time] [--skip-bytes]

Every scenario is built fresh in a scratch directory: a 2 GiB qcow2 base B (4 MiB written,
adopted as the VM's disk), then snapshots taken with the real service
(`ledger_service(LedgerApplication(sqlite), QemuImgStorage())`), with the guest's writes made by
`qemu-io` into whichever image is active at the time. The frozen image F of snapshot s2 then
has data F MiB and its child C has C MiB.

(a) Bytes. For each scenario: the plan of `delete(..., dry_run=True)` (strategy, bytes_moved),
the always-commit baseline (what libvirt does: `qemu-img commit` of the child into F, i.e. the
child's allocated bytes as `qemu-img map` of that layer alone reports them; for a branch point,
which libvirt refuses and commit can't do, the only safe way, F copied into every branch), and
what the real delete then wrote: the write bytes the kernel accounted to the qemu-img processes
(getrusage(RUSAGE_CHILDREN).ru_oublock x 512; data and qcow2 metadata), next to the same figure
for the baseline command run on a fresh, identical build. Target: never more than the baseline,
and >= 100x fewer on the big-child-small-parent scenarios.

(b) Time. For a commit case and a pull case that each move 256 MiB, on fresh identical builds,
median of --repeat runs each: the adapter's merge call (QemuImgStorage.commit / .pull, with its
qemu-img info probes of the chain), the whole in-process service call (`Snapledger.delete`),
the whole `snapledger delete` CLI process, and the bare `qemu-img commit -q -d -b F C` /
`qemu-img rebase -q -b B -F qcow2 C` that moves the same bytes. Target: merge <= 1.1 x bare + 15 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.qemu_img import QemuImgStorage

MIB = 1 << 20
VSIZE = 2 << 30
C_OFFSET = 1 << 30  # the child's writes go in the upper half, the parent's in the lower


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def write(path: str, offset: int, mib: int, pattern: int) -> None:
    """The guest writes `mib` MiB at `offset` (in 32 MiB requests)."""
    if mib <= 0:
        return
    cmds: list[str] = []
    done = 0
    while done < mib:
        n = min(32, mib - done)
        cmds += ["-c", f"write -P {pattern} {offset + done * MIB} {n * MIB}"]
        done += n
    run("qemu-io", "-f", "qcow2", *cmds, path)


def io_children() -> tuple[float, float, int]:
    """(user+sys CPU s, -, bytes written) of waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, 0.0, r.ru_oublock * 512


class TimedStorage(QemuImgStorage):
    """The real adapter; only records how long each merge call takes (bench-side subclass)."""

    def __init__(self) -> None:
        super().__init__()
        self.merges: list[tuple[str, float, float]] = []

    def _timed(self, what: str, call: Callable[[], None]) -> None:
        cpu0, _, _ = io_children()
        p0 = time.process_time()
        started = time.perf_counter()
        call()
        wall = time.perf_counter() - started
        cpu = time.process_time() - p0 + io_children()[0] - cpu0
        self.merges.append((what, wall, cpu))

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        self._timed("commit", lambda: super(TimedStorage, self).commit(top, base, fmt=fmt))

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._timed(
            "pull",
            lambda: super(TimedStorage, self).pull(image, new_backing, new_backing_format, fmt=fmt),
        )


@dataclass
class Built:
    directory: Path
    ledger: Snapledger
    images: dict[str, str] = field(default_factory=dict)  # role -> path

    @property
    def store(self) -> str:
        return f"sqlite:///{self.directory / 'ledger.sqlite'}"


def fresh(directory: Path, storage: QemuImgStorage | None = None) -> Built:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    base = str(directory / "base.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(VSIZE))
    write(base, 0, 4, 0x11)
    ledger = ledger_service(LedgerApplication(f"sqlite:///{directory / 'ledger.sqlite'}"), storage or TimedStorage())
    ledger.adopt("vm", {"vda": base}, pools=[str(directory)])
    return Built(directory, ledger, {"B": base})


def active(b: Built) -> str:
    return b.ledger.vm("vm").disks["vda"]


def chain(directory: Path, f_mib: int, c_mib: int, storage: QemuImgStorage | None = None) -> Built:
    """B <- F (f_mib, frozen by s2) <- C (c_mib, active)."""
    b = fresh(directory, storage)
    b.ledger.snapshot("vm", "s1")
    b.images["F"] = active(b)
    write(b.images["F"], 64 * MIB, f_mib, 0x22)
    b.ledger.snapshot("vm", "s2")
    b.images["C"] = active(b)
    write(b.images["C"], C_OFFSET, c_mib, 0x33)
    return b


def leaf_and_adopted_branch(directory: Path) -> Built:
    """s1 frozen at B; s2 frozen at F (8 MiB); revert to s1: B has two branches (F, R), and
    F's only child (the abandoned present) is gone, so F is a leaf."""
    b = fresh(directory)
    b.ledger.snapshot("vm", "s1")
    b.images["F"] = active(b)
    write(b.images["F"], 64 * MIB, 8, 0x22)
    b.ledger.snapshot("vm", "s2")
    write(active(b), C_OFFSET, 8, 0x33)
    b.ledger.revert("vm", "s1")
    b.images["R"] = active(b)
    write(b.images["R"], C_OFFSET, 2, 0x44)
    return b


def managed_branch(directory: Path, f_mib: int = 32) -> Built:
    """F (f_mib, frozen by s2) is the base of two branches: C (8 MiB, frozen by s3) and R (active)."""
    b = fresh(directory)
    b.ledger.snapshot("vm", "s1")
    b.images["F"] = active(b)
    write(b.images["F"], 64 * MIB, f_mib, 0x22)
    b.ledger.snapshot("vm", "s2")
    b.images["C"] = active(b)
    write(b.images["C"], C_OFFSET, 8, 0x33)
    b.ledger.snapshot("vm", "s3")
    b.ledger.revert("vm", "s2")
    b.images["R"] = active(b)
    write(b.images["R"], C_OFFSET, 2, 0x44)
    return b


def allocated(path: str) -> int:
    return QemuImgStorage().inspect(path).allocated


@dataclass
class Scenario:
    name: str
    build: Callable[[Path], Built]
    snapshot: str
    branches: str
    baseline: Callable[[Built], int]  # bytes the always-commit baseline moves
    baseline_cmd: Callable[[Built], list[str]] | None
    big_child_small_parent: bool = False
    note: str = ""


def child_alloc(b: Built) -> int:
    return allocated(b.images["C"])


def commit_cmd(b: Built) -> list[str]:
    return ["qemu-img", "commit", "-q", "-d", "-b", b.images["F"], b.images["C"]]


SCENARIOS = [
    Scenario("big child, small parent (F 1 MiB, C 256 MiB)", lambda d: chain(d, 1, 256), "s2", "forbid",
             child_alloc, commit_cmd, big_child_small_parent=True),
    Scenario("big child, small parent (F 2 MiB, C 512 MiB)", lambda d: chain(d, 2, 512), "s2", "forbid",
             child_alloc, commit_cmd, big_child_small_parent=True),
    Scenario("small child, big parent (F 256 MiB, C 1 MiB)", lambda d: chain(d, 256, 1), "s2", "forbid",
             child_alloc, commit_cmd),
    Scenario("equal (F 64 MiB, C 64 MiB)", lambda d: chain(d, 64, 64), "s2", "forbid", child_alloc, commit_cmd),
    Scenario("leaf (F 8 MiB, no child left)", leaf_and_adopted_branch, "s2", "forbid", lambda b: 0, None,
             note="no child: nothing to commit, the baseline also just drops F"),
    Scenario("branch point on adopted base B (2 branches)", leaf_and_adopted_branch, "s1", "forbid",
             lambda b: 2 * allocated(b.images["B"]), None,
             note="libvirt refuses; the only safe removal copies B into each branch"),
    Scenario("managed branch point, --branches pull (F 32 MiB, 2 branches)", managed_branch, "s2", "pull",
             lambda b: 2 * allocated(b.images["F"]), None,
             note="libvirt refuses; commit can't; F copied into each branch"),
]


def part_a(root: Path) -> bool:
    print("(a) bytes per deletion (plan = dry run; written = kernel write accounting of the qemu-img "
          "processes during the real delete, data + qcow2 metadata)")
    header = f"{'scenario':58s} {'plan':>10s} {'baseline':>11s} {'written':>11s} {'base wrote':>11s} {'ratio':>8s}  strategy"
    print(header)
    ok_never_more, ok_100x = True, True
    for sc in SCENARIOS:
        b = sc.build(root / "a")
        plan = b.ledger.delete("vm", sc.snapshot, branches=sc.branches, dry_run=True)
        baseline = sc.baseline(b)
        _, _, w0 = io_children()
        b.ledger.delete("vm", sc.snapshot, branches=sc.branches)
        written = io_children()[2] - w0
        base_wrote = "-"
        if sc.baseline_cmd is not None:
            bb = sc.build(root / "a")
            _, _, w0 = io_children()
            run(*sc.baseline_cmd(bb))
            base_wrote = f"{(io_children()[2] - w0) / MIB:.2f} MiB"
        moved = plan.bytes_moved
        ratio = baseline / moved if moved else (float("inf") if baseline else 1.0)
        if moved > baseline:
            ok_never_more = False
        if sc.big_child_small_parent and ratio < 100:
            ok_100x = False
        shown = f"{ratio:.0f}x" if moved else "(0 B)"
        print(f"{sc.name:58s} {moved / MIB:6.2f} MiB {baseline / MIB:7.2f} MiB {written / MIB:7.2f} MiB "
              f"{base_wrote:>11s} {shown:>8s}  {plan.strategy}"
              + (f"  [{sc.note}]" if sc.note else ""))
    print(f"RESULT bytes never more than the always-commit baseline: {'MET' if ok_never_more else 'MISSED'}")
    print(f"RESULT >= 100x fewer bytes on big-child-small-parent: {'MET' if ok_100x else 'MISSED'}")
    return ok_never_more and ok_100x


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def part_b(root: Path, repeat: int) -> None:
    print(f"\n(b) merge time, 256 MiB moved, median of {repeat} runs on fresh identical builds "
          "(ms wall / ms CPU incl. qemu-img children)")
    cases = [
        ("commit (F 320 MiB, C 256 MiB)", 320, 256,
         lambda b: ["qemu-img", "commit", "-q", "-d", "-b", b.images["F"], b.images["C"]]),
        ("pull (F 256 MiB, C 320 MiB)", 256, 320,
         lambda b: ["qemu-img", "rebase", "-q", "-b", b.images["B"], "-F", "qcow2", b.images["C"]]),
    ]
    all_met = True
    for label, f_mib, c_mib, bare_cmd in cases:
        merge, service, cli, bare, probes = [], [], [], [], []
        for _ in range(repeat):
            # the adapter's merge call and the in-process service call
            storage = TimedStorage()
            b = chain(root / "b", f_mib, c_mib, storage)
            plan = b.ledger.delete("vm", "s2", dry_run=True)
            c0 = io_children()[0]
            t0 = time.perf_counter()
            storage._info_chain(b.images["C"], "qcow2")  # noqa: SLF001  the checks the merge call makes first
            probes.append(((time.perf_counter() - t0) * 1000, (io_children()[0] - c0) * 1000))
            assert plan.strategy.startswith(f"vda: {label.split()[0]} ("), plan.strategy
            c0 = io_children()[0]
            p0 = time.process_time()
            t0 = time.perf_counter()
            b.ledger.delete("vm", "s2")
            service.append(((time.perf_counter() - t0) * 1000,
                            (time.process_time() - p0 + io_children()[0] - c0) * 1000))
            (_, wall, cpu), = storage.merges
            merge.append((wall * 1000, cpu * 1000))
            # the whole CLI process
            b = chain(root / "b", f_mib, c_mib)
            env = {**os.environ, "SNAPLEDGER_STORE": b.store}
            c0 = io_children()[0]
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "snapledger.adapters.cli", "delete", "vm", "s2"],
                           env=env, check=True, capture_output=True)
            cli.append(((time.perf_counter() - t0) * 1000, (io_children()[0] - c0) * 1000))
            # bare qemu-img
            b = chain(root / "b", f_mib, c_mib)
            c0 = io_children()[0]
            t0 = time.perf_counter()
            run(*bare_cmd(b))
            bare.append(((time.perf_counter() - t0) * 1000, (io_children()[0] - c0) * 1000))
        rows = [("bare qemu-img", bare), ("adapter merge call", merge),
                ("  of which chain probes (info x3)", probes),
                ("service delete (in-process)", service), ("snapledger delete CLI process", cli)]
        print(f"  {label}")
        for name, xs in rows:
            print(f"    {name:32s} {median([w for w, _ in xs]):8.1f} ms wall {median([c for _, c in xs]):8.1f} ms CPU"
                  f"   runs: {', '.join(f'{w:.0f}' for w, _ in xs)}")
        bare_ms = median([w for w, _ in bare])
        limit = 1.1 * bare_ms + 15
        for name, xs in rows[1:2] + rows[3:]:
            got = median([w for w, _ in xs])
            met = got <= limit
            if name == "adapter merge call":
                all_met &= met
            print(f"RESULT {label.split()[0]} {name}: {got:.0f} ms vs limit 1.1 x {bare_ms:.0f} + 15 = {limit:.0f} ms: "
                  f"{'MET' if met else 'MISSED'}")
    print(f"RESULT merge time (adapter merge call, both cases): {'MET' if all_met else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/snapledger-merge-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-bytes", action="store_true")
    args = parser.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"scratch: {root}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    if not args.skip_bytes:
        part_a(root)
    if not args.skip_time:
        part_b(root, args.repeat)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
