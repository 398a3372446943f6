"""Scanning a directory of qcow2 files for dependants (adapters/storage/qcow2_headers.py).

    python bench/scan_bench.py [--dir /tmp/snapledger-scan-bench] [--files 10000] [--raw 0.2]
                               [--repeat 7] [--cold 5] [--fresh]

A handful of real images are made with qemu-img in DIR/templates: a base, an overlay on it
(absolute backing name), a version-2 overlay (compat=0.10), an overlay with a relative name and
one with a `json:` name, plus raw disks and a small text file. DIR/vm is then filled with
--files files, byte-for-byte copies of those (written sparse, so 10,000 of them take little
disk), a --raw fraction of them raw; a few copies are checked with `qemu-img info`. One hand-made
chain on the overlay (hand1 <- hand2) sits among them, as a user would leave it.

Timed, median of --repeat runs with a warm page cache: `DependantIndex.scan([DIR/vm])`, then
`dependants(overlay, known=templates)`, wall and CPU. As root, also --cold runs after
`echo 3 > /proc/sys/vm/drop_caches` (every cache on the machine is dropped: other users' too).
Target: scan + query of 10,000 files well under a second (<= 250 ms warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from snapledger.adapters.storage.qcow2_headers import DependantIndex

TARGET_MS = 250.0
SIZE = 64 << 20
BLOCK = 4096


def qemu_img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True, timeout=60)


def make_templates(templates: Path) -> tuple[list[Path], list[Path], Path]:
    """(qcow2 templates, raw templates, the overlay they are benchmarked against)."""
    templates.mkdir(parents=True)
    base, overlay = templates / "base.qcow2", templates / "base.s1"
    qemu_img("create", "-q", "-f", "qcow2", str(base), str(SIZE))
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    v2 = templates / "v2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-F", "qcow2", "-b", str(overlay),
             str(v2))
    relative = templates / "relative.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", str(relative))
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": str(overlay)}}
    by_json = templates / "json.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(by_json), str(SIZE))
    qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", "json:" + json.dumps(spec),
             str(by_json))
    raw_zero, raw_data, text = templates / "zero.raw", templates / "data.raw", templates / "notes.txt"
    qemu_img("create", "-q", "-f", "raw", str(raw_zero), str(SIZE))
    raw_data.write_bytes(os.urandom(BLOCK * 4))
    text.write_text("not an image\n")
    return [base, overlay, v2, relative, by_json], [raw_zero, raw_data, text], overlay


def sparse_copy(data: bytes, size: int, to: Path) -> None:
    """`data` (the first bytes of a file of `size` bytes) written block by block, holes skipped."""
    fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for at in range(0, len(data), BLOCK):
            block = data[at : at + BLOCK]
            if block.count(0) != len(block):
                os.pwrite(fd, block, at)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def build(root: Path, files: int, raw_fraction: float) -> tuple[Path, Path, list[str]]:
    templates, vm = root / "templates", root / "vm"
    qcow2, raw, overlay = make_templates(templates)
    vm.mkdir()
    # Only the allocated part of a qcow2 file made by qemu-img holds non-zero bytes.
    sources = [(p.read_bytes()[: 1 << 20], p.stat().st_size, p.suffix or ".qcow2") for p in qcow2]
    raws = [(p.read_bytes()[: 1 << 20], p.stat().st_size, p.suffix) for p in raw]
    raw_files = round((files - 2) * raw_fraction)
    made = {True: 0, False: 0}
    for n in range(files - 2):
        # The raw ones spread evenly among the qcow2 ones; each kind's templates in turn.
        is_raw = (n * raw_files) // (files - 2) != ((n + 1) * raw_files) // (files - 2)
        kind = raws if is_raw else sources
        data, size, suffix = kind[made[is_raw] % len(kind)]
        made[is_raw] += 1
        sparse_copy(data, size, vm / f"disk{n:06d}{suffix}")
    print(f"{made[False]:,} qcow2 copies of {len(sources)} templates, {made[True]:,} raw or text "
          f"copies of {len(raws)}, and hand1 <- hand2")
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(overlay), str(vm / "hand1.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(vm / "hand1.qcow2"),
             str(vm / "hand2.qcow2"))
    for sample in sorted(vm.iterdir())[:: max(1, files // 7)]:
        subprocess.run(["qemu-img", "info", "-U", str(sample)], check=True, capture_output=True)
    return vm, overlay, [str(p) for p in templates.iterdir()]


def timed(vm: Path, overlay: Path, known: list[str]) -> tuple[float, float, float, float, int, int]:
    """(scan ms wall, scan ms CPU, query ms wall, query ms CPU, files found, dependants)."""
    wall, cpu = time.perf_counter(), time.process_time()
    index = DependantIndex.scan([str(vm)])
    scan_wall, scan_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    found = index.dependants(str(overlay), known)
    query_wall, query_cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert not index.unreadable, index.unreadable
    return (scan_wall * 1e3, scan_cpu * 1e3, query_wall * 1e3, query_cpu * 1e3,
            len(os.listdir(vm)), len(found))


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def report(label: str, runs: list[tuple[float, float, float, float, int, int]]) -> float:
    def med(i: int) -> float:
        return statistics.median(r[i] for r in runs)

    total = statistics.median(r[0] + r[2] for r in runs)
    print(f"{label:>5}, {len(runs)} runs: scan {med(0):7.1f} ms ({med(1):.1f} CPU)   "
          f"dependants {med(2):6.2f} ms ({med(3):.2f} CPU)   total {total:7.1f} ms   "
          f"range {min(r[0] + r[2] for r in runs):.1f}-{max(r[0] + r[2] for r in runs):.1f}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/snapledger-scan-bench"))
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--raw", type=float, default=0.2, help="fraction of raw files")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cold", type=int, default=5, help="runs after dropping caches (root)")
    parser.add_argument("--fresh", action="store_true", help="rebuild DIR")
    args = parser.parse_args()
    marker = args.dir / f"built-{args.files}-{args.raw}"
    if args.fresh or not marker.exists():
        shutil.rmtree(args.dir, ignore_errors=True)
        started = time.perf_counter()
        build(args.dir, args.files, args.raw)
        marker.write_text("")
        print(f"built {args.files:,} files in {args.dir} in {time.perf_counter() - started:.1f} s")
    vm, overlay = args.dir / "vm", args.dir / "templates" / "base.s1"
    known = [str(p) for p in (args.dir / "templates").iterdir()]
    timed(vm, overlay, known)  # warm the page cache and the interpreter
    warm = [timed(vm, overlay, known) for _ in range(args.repeat)]
    print(f"{warm[0][4]:,} files, {warm[0][5]:,} dependants of {overlay.name} "
          f"(every copy of the overlays on it, and hand1, hand2)")
    total = report("warm", warm)
    cold: list[tuple[float, float, float, float, int, int]] = []
    for _ in range(args.cold):
        if not drop_caches():
            print("cold: not run (dropping the page cache needs root)")
            break
        cold.append(timed(vm, overlay, known))
    if cold:
        report("cold", cold)
    met = "MET" if total <= TARGET_MS else "MISSED"
    print(f"RESULT scan + dependants of {warm[0][4]:,} files: median {total:.0f} ms warm "
          f"(target <= {TARGET_MS:.0f} ms): {met}")


if __name__ == "__main__":
    main()
