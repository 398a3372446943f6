"""Rotation (issue 13): an hourly snapshot and the delete of the oldest, keeping 24, cycle after
cycle on one VM; the cost of a cycle as the ledger's history grows while the VM's state does not.

    python bench/rotation_bench.py [--cycles 8760] [--store sqlite] [--at 25,100,300,1000,...]
    python bench/rotation_bench.py --cli [--cycles 8760] [--at 25,8760]

In process: one long-lived `ledger_service` over SimulatedStorage on a SQLite ledger file (or
`--store memory`): no interpreter start and no qemu-img, only snapledger's own work. At each
cycle named by --at, `--sample` cycles are timed (wall and CPU, medians); the ratio of the last
sample to the one at cycle 25 is the figure issue 13 asks for (≤ 1.2).

--cli: whole `snapledger` processes on real qcow2 files (a 1 MiB base, 4 KiB written by qemu-io
before each snapshot). The year is built in process with the real storage adapter (qemu-img),
and at each --at mark `--sample` cycles are run as two processes each (`snapledger snapshot`,
`snapledger delete`), timed by wall clock. Beside them, in the same run, the bare work of a
cycle: two Python starts (`python -c pass`), one `qemu-img create` of an overlay and one
`qemu-img commit` of a 4 KiB one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.qemu_img import QemuImgStorage
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


def cli_cycle(env: dict[str, str], n: int) -> float:
    """Hour n as an operator's cron job would run it: the guest writes (not timed), then two
    whole processes."""
    shown = subprocess.run([sys.executable, "-m", "snapledger.adapters.cli", "show", VM, "--json"],
                           env=env, capture_output=True, text=True, check=True)
    guest_write(json.loads(shown.stdout)["disks"]["vda"]["active"], n)
    started = time.perf_counter()
    for argv in (["snapshot", VM, f"h{n}"], ["delete", VM, f"h{n - KEEP}"] if n > KEEP else None):
        if argv is None:
            continue
        done = subprocess.run([sys.executable, "-m", "snapledger.adapters.cli", *argv], env=env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"snapledger {' '.join(argv)}: {done.stderr.strip()}")
    return (time.perf_counter() - started) * 1000


def guest_write(path: str, n: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {n % 251 + 1} {(n % 16) * 65536} 4k", path],
                   capture_output=True, check=True)


def bare_cycle(directory: Path) -> float:
    """What a cycle can't do without: two Python starts, one overlay made, one small commit."""
    base, top = directory / "bare-base.qcow2", directory / "bare-top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)], check=True)
    guest_write(str(top), 1)
    started = time.perf_counter()
    for _ in range(2):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(top),
                    str(directory / "bare-next.qcow2")], check=True)
    subprocess.run(["qemu-img", "commit", "-q", "-d", str(top)], check=True)
    took = (time.perf_counter() - started) * 1000
    for path in (base, top, directory / "bare-next.qcow2"):
        path.unlink()
    return took


def whole_processes(args: argparse.Namespace, directory: Path) -> list[tuple[int, float, float, int]]:
    disk_dir = directory / "images"
    disk_dir.mkdir(exist_ok=True)
    disk = disk_dir / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    url = f"sqlite:///{directory}/ledger.sqlite"
    env = {**os.environ, "SNAPLEDGER_STORE": url, "SNAPLEDGER_HOST": "bench", "COLUMNS": "120"}
    storage = QemuImgStorage()
    ledger = ledger_service(LedgerApplication(url), storage)
    ledger.adopt(VM, {"vda": str(disk)})
    marks = sorted(int(a) for a in args.at.split(",") if int(a) <= args.cycles)
    results: list[tuple[int, float, float, int]] = []
    n = 0
    started = time.perf_counter()
    for mark in marks:
        while n + 1 < mark:  # the year, built in this process on the same files
            n += 1
            guest_write(ledger.view.vms[VM].disks["vda"], n)
            ledger.snapshot(VM, f"h{n}")
            if n > KEEP:
                ledger.delete(VM, f"h{n - KEEP}")
        ledger.close()
        walls, bares = [], []
        for _ in range(args.sample):
            n += 1
            walls.append(cli_cycle(env, n))
            bares.append(bare_cycle(directory))
        events = LedgerApplication(url).last_position()
        results.append((n, statistics.median(walls), statistics.median(bares), events))
        print(f"cycle {n:>6,}: {events:>9,} events, {results[-1][1]:7.1f} ms per cycle as two processes, "
              f"bare work {results[-1][2]:5.1f} ms ({results[-1][1] / results[-1][2]:.1f}x)  "
              f"({time.perf_counter() - started:,.0f} s)", flush=True)
        ledger = ledger_service(LedgerApplication(url), storage)
    ledger.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=8_760)
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--at", default="25,100,300,1000,3000,8760")
    parser.add_argument("--sample", type=int, default=5)
    parser.add_argument("--dir", default=None, help="keep the ledger here (default: a scratch dir)")
    parser.add_argument("--cli", action="store_true", help="whole processes on real qcow2 files")
    args = parser.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="rotation-"))
    directory.mkdir(parents=True, exist_ok=True)
    if args.cli:
        results = whole_processes(args, directory)
        first, last = results[0], results[-1]
        print(f"\nwhole processes: cycle {last[0]:,} / cycle {first[0]:,} = {last[1] / first[1]:.2f} "
              f"(target <= 1.2); at cycle {first[0]:,}: {first[1] / first[2]:.1f}x the bare work (target <= 4)")
        print(f"ledger: {directory}")
        return 0
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
