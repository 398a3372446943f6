"""A VM with a chain of 200 snapshots on real qcow2 files: the cost of deleting one of them
against the bare qemu-img work it must do, and of `verify` (issue 13).

    python bench/deep_chain_bench.py [--depth 200] [--dir /var/tmp/deep-chain-bench]

For each case a fresh chain is built in process (`ledger_service` over QemuImgStorage, the
guest's writes made by qemu-io: 4 KiB into each layer, 1 MiB into the deleted snapshot's own
layer). Then `snapledger delete deep sN` runs as a whole process (`python -c` running the
command line's `main`, with the qemu-img runner timed from inside): its wall time, the time
spent in the merge (`qemu-img commit` / `rebase`: the bare work, which no tool can skip), and
how many qemu-img processes it ran; then `snapledger verify deep` as a whole process.
Targets: delete <= 1.5 x the bare merge + 150 ms; verify <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.qemu_img import QemuImgStorage

TIMED = """
import json, sys, time
started = time.perf_counter()
from snapledger.adapters.storage import qemu_img_runner
runner = qemu_img_runner.QemuImgRunner
spent = {"merge": 0.0, "processes": 0}
real_run, real_merge = runner.run, runner.merge
def run(self, *args, **kwargs):
    spent["processes"] += 1
    return real_run(self, *args, **kwargs)
def merge(self, *args, **kwargs):
    spent["processes"] += 1
    t = time.perf_counter()
    try:
        return real_merge(self, *args, **kwargs)
    finally:
        spent["merge"] += time.perf_counter() - t
runner.run, runner.merge = run, merge
from snapledger.adapters.cli.main import main
code = main(sys.argv[1:])
spent["wall"] = time.perf_counter() - started
spent["code"] = code
print(json.dumps(spent), file=sys.stderr)
"""


def qemu_io_write(path: str, offset: int, length: str, pattern: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", path],
                   capture_output=True, check=True)


def build(directory: Path, depth: int, big: int) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    disk = directory / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    ledger = ledger_service(LedgerApplication(f"sqlite:///{directory}/ledger.sqlite"), QemuImgStorage())
    ledger.adopt("deep", {"vda": str(disk)})
    for n in range(1, depth + 1):
        active = ledger.view.vms["deep"].disks["vda"]
        if n == big:
            qemu_io_write(active, 8 << 20, "1M", n % 250 + 2)
        else:
            qemu_io_write(active, (n % 64) * 65536, "4k", n % 250 + 2)
        ledger.snapshot("deep", f"s{n}")
    ledger.close()


def whole_process(directory: Path, *argv: str) -> dict[str, float]:
    env = {**os.environ, "SNAPLEDGER_STORE": f"sqlite:///{directory}/ledger.sqlite",
           "SNAPLEDGER_HOST": "bench", "COLUMNS": "120"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TIMED, *argv], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    spent: dict[str, float] = json.loads(done.stderr.strip().splitlines()[-1])
    if spent["code"] != 0 and argv[0] != "verify":
        raise SystemExit(f"snapledger {' '.join(argv)} failed: {done.stderr}")
    spent["process"] = wall
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="deep-chain-"))
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # warm the cache
    t = time.perf_counter()
    for _ in range(5):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_start = (time.perf_counter() - t) / 5
    print(f"python start: {python_start * 1000:.0f} ms")
    for deleted in (args.depth // 2, args.depth - 1):
        directory = root / f"s{deleted}"
        t = time.perf_counter()
        build(directory, args.depth, deleted)
        built = time.perf_counter() - t
        delete = whole_process(directory, "delete", "deep", f"s{deleted}")
        verify = whole_process(directory, "verify", "deep")
        bare = delete["merge"]
        print(f"delete s{deleted} of {args.depth} (built in {built:.0f} s): {delete['process'] * 1000:.0f} ms "
              f"whole process, {bare * 1000:.0f} ms of it the merge (bare), {int(delete['processes'])} "
              f"qemu-img processes; target {(1.5 * bare + 0.150) * 1000:.0f} ms "
              f"({'met' if delete['process'] <= 1.5 * bare + 0.150 else 'NOT met'})")
        print(f"verify deep after it: {verify['process'] * 1000:.0f} ms whole process, "
              f"{int(verify['processes'])} qemu-img processes (target 1000 ms: "
              f"{'met' if verify['process'] <= 1.0 else 'NOT met'})", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SNAPLEDGER_HOST", "bench")  # the build and the processes: one host
    sys.exit(main())
