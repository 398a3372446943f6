"""Live snapshot deletion on a running libvirt domain: `snapledger delete` against
`virsh snapshot-delete`, on identical layouts built fresh for each run.

    python bench/libvirt_bench.py [--dir /var/tmp/snapledger-libvirt-bench] [--repeat 3]

Needs a running libvirtd (qemu:///system) and QEMU; the domains are tiny and OS-less (64 MiB,
TCG), as in tests/system/test_libvirt.py. Each layout is made the way a virsh user makes it:
`virsh snapshot-create-as --disk-only --atomic`, with the guest's writes done by HMP qemu-io
inside the running QEMU. Then one of the two deletes runs on the running domain:

- virsh: `virsh snapshot-delete DOMAIN s` (libvirt 9.0 merges the snapshot's overlay into the
  image below it with a block commit);
- snapledger: `snapledger adopt DOMAIN --libvirt` (imports the history; not timed), then
  `snapledger delete DOMAIN s` (timed: the whole CLI process).

Layouts (the snapshot deleted is the current one, its overlay the active image):
- "64 MiB child over a 1 GiB base": base with 1 GiB written, snapshot s1, 64 MiB written.
  Both tools commit the 64 MiB child into the base.
- "small parent, big child": base 4 MiB, s1, 8 MiB written (the parent layer), s2, 256 MiB
  written (the child). Deleting s2: libvirt commits the 256 MiB child into the parent,
  snapledger pulls the 8 MiB parent into the child.

Bytes moved: for virsh, the allocated bytes of the layer libvirt merged (qemu-img map of that
layer alone, before the delete; a block commit copies exactly those); for snapledger, the plan's
`bytes_moved` (the same measure). Wall time: median of --repeat runs, each on a fresh build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

URI = "qemu:///system"
MIB = 1 << 20
CLI = [sys.executable, "-m", "snapledger.adapters.cli"]


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def virsh(*args: str) -> str:
    return run(["virsh", "-c", URI, *args])


def allocated(path: str) -> int:
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": path}, "backing": None}
    out = run(["qemu-img", "map", "-U", "--output=json", "json:" + json.dumps(spec)])
    return sum(e["length"] for e in json.loads(out) if e.get("data") and e.get("depth", 0) == 0)


@dataclass
class Layout:
    title: str
    base_mib: int
    layers: list[int]  # MiB written after each snapshot s1, s2, ...
    delete: str  # the snapshot deleted


LAYOUTS = [
    Layout("64 MiB child over a 1 GiB base", 1024, [64], "s1"),
    Layout("small parent (8 MiB), big child (256 MiB)", 4, [8, 256], "s2"),
]


class Build:
    def __init__(self, root: Path, layout: Layout) -> None:
        self.dir = root / uuid.uuid4().hex[:8]
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o755)
        self.name = f"slbench-{self.dir.name}"
        base = str(self.dir / "vda.qcow2")
        size = max(2048, layout.base_mib * 2)
        run(["qemu-img", "create", "-q", "-f", "qcow2", base, f"{size}M"])
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x01 0 {layout.base_mib}M", base])
        xml = self.dir / "domain.xml"
        xml.write_text(
            f"<domain type='qemu'><name>{self.name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            "<emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'>"
            f"<driver name='qemu' type='qcow2'/><source file='{base}'/>"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>"
        )
        virsh("define", str(xml))
        virsh("start", self.name)
        offset = layout.base_mib * MIB
        for i, mib in enumerate(layout.layers, start=1):
            virsh("snapshot-create-as", self.name, f"s{i}", "--disk-only", "--atomic")
            self.guest_write(0x10 + i, offset, mib * MIB)
            offset += mib * MIB
        self.env = {**os.environ, "SNAPLEDGER_STORE": f"sqlite:///{self.dir}/ledger.sqlite"}

    def guest_write(self, pattern: int, offset: int, length: int) -> None:
        qdev = "/machine/peripheral/virtio-disk0/virtio-backend"
        step = 64 * MIB  # HMP qemu-io in pieces, so that no single monitor command runs long
        for at in range(offset, offset + length, step):
            size = min(step, offset + length - at)
            virsh("qemu-monitor-command", "--hmp", self.name,
                  f'qemu-io -d {qdev} "write -P {pattern:#x} {at} {size}"')
        virsh("qemu-monitor-command", "--hmp", self.name, f'qemu-io -d {qdev} "flush"')

    def overlay(self, snapshot: str) -> str:
        return str(self.dir / f"vda.{snapshot}")

    def close(self) -> None:
        subprocess.run(["virsh", "-c", URI, "destroy", self.name], capture_output=True, check=False)
        subprocess.run(["virsh", "-c", URI, "undefine", self.name, "--snapshots-metadata"],
                       capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def one_virsh(root: Path, layout: Layout) -> tuple[float, int]:
    build = Build(root, layout)
    try:
        moved = allocated(build.overlay(layout.delete))  # libvirt commits this layer
        started = time.perf_counter()
        virsh("snapshot-delete", build.name, layout.delete)
        seconds = time.perf_counter() - started
        if os.path.exists(build.overlay(layout.delete)):
            raise SystemExit("virsh kept the overlay: not the commit this benchmark assumes")
        return seconds, moved
    finally:
        build.close()


def one_snapledger(root: Path, layout: Layout) -> tuple[float, int, str]:
    build = Build(root, layout)
    try:
        run([*CLI, "adopt", build.name, "--libvirt"], build.env)
        started = time.perf_counter()
        out = run([*CLI, "delete", build.name, layout.delete, "--json"], build.env)
        seconds = time.perf_counter() - started
        plan = json.loads(out)
        return seconds, int(plan["bytes_moved"]), plan["steps"][0]["action"]
    finally:
        build.close()


def one_service(root: Path, layout: Layout) -> tuple[float, int, str]:
    """The same delete as one in-process service call (no interpreter start, no imports)."""
    from snapledger.adapters.compose import ledger_service
    from snapledger.adapters.eventstore.application import LedgerApplication
    from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor
    from snapledger.adapters.storage.qemu_img import QemuImgStorage

    build = Build(root, layout)
    try:
        run([*CLI, "adopt", build.name, "--libvirt"], build.env)
        ledger = ledger_service(LedgerApplication(build.env["SNAPLEDGER_STORE"]), QemuImgStorage(),
                            hypervisor=LibvirtHypervisor())
        ledger.refresh()
        started = time.perf_counter()
        plan = ledger.delete(build.name, layout.delete)
        seconds = time.perf_counter() - started
        return seconds, plan.bytes_moved, plan.steps[0].action
    finally:
        build.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/tmp/snapledger-libvirt-bench")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    print(" / ".join(line.strip() for line in virsh("version").splitlines() if line.strip()))
    print("| layout | tool | how | bytes moved | wall time (median) | runs |")
    print("|---|---|---|---:|---:|---|")
    for layout in LAYOUTS:
        v = [one_virsh(root, layout) for _ in range(args.repeat)]
        s = [one_snapledger(root, layout) for _ in range(args.repeat)]
        p = [one_service(root, layout) for _ in range(args.repeat)]
        v_time = statistics.median(t for t, _ in v)
        s_time = statistics.median(t for t, _, _ in s)
        p_time = statistics.median(t for t, _, _ in p)
        print(f"| {layout.title} | virsh snapshot-delete | commit | {v[0][1]:,} | {v_time:.2f} s | "
              f"{', '.join(f'{t:.2f}' for t, _ in v)} |")
        print(f"| {layout.title} | snapledger delete | {s[0][2]} | {s[0][1]:,} | {s_time:.2f} s | "
              f"{', '.join(f'{t:.2f}' for t, _, _ in s)} |")
        print(f"| {layout.title} | Snapledger.delete in process | {p[0][2]} | {p[0][1]:,} | "
              f"{p_time:.2f} s | {', '.join(f'{t:.2f}' for t, _, _ in p)} |")
        print(f"| {layout.title} | ratio snapledger CLI / virsh | | {s[0][1] / v[0][1]:.3f} | "
              f"{s_time / v_time:.2f} | |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
