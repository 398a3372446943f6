"""The RFC's story on small real qcow2 images, through the `snapledger` command itself.

Run with `python -m snapledger.adapters.cli.demo [SCRATCH_DIR]` (needs qemu-img and qemu-io). Every
command is printed before it runs; a guest's writes are stood in for by `qemu-io write`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from snapledger.adapters.cli.entry import main as snapledger

MIB = 1 << 20


def sh(*argv: str) -> None:
    print(f"$ {shlex.join(argv)}", flush=True)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def run(*argv: str, expect: int = 0) -> None:
    print(f"\n$ snapledger {shlex.join(argv)}", flush=True)
    code = snapledger(list(argv))
    sys.stdout.flush()
    if code != expect:
        raise SystemExit(f"demo: 'snapledger {shlex.join(argv)}' exited {code}, expected {expect}")


def guest_writes(image: Path, pattern: int, offset_mib: int) -> None:
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset_mib}M 1M", str(image))


def play(scratch: Path) -> None:
    os.environ["SNAPLEDGER_STORE"] = f"sqlite:///{scratch / 'ledger.sqlite'}"
    print(f"scratch directory: {scratch}\nstore: {os.environ['SNAPLEDGER_STORE']}")
    base = scratch / "base.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M")
    guest_writes(base, 0x11, 0)
    run("adopt", "demo", "--disk", f"vda={base}")
    for n, name in enumerate(["snap1", "snap2", "snap3"], start=1):
        run("snapshot", "demo", name)
        guest_writes(scratch / f"base.{name}", 0x20 + n, n)
    run("tree", "demo")
    print("\n# back to snap1: a new overlay base.snap1-1; the snapshot-less present base.snap3 goes")
    run("revert", "demo", "snap1")
    guest_writes(scratch / "base.snap1-1", 0x5A, 8)  # the alternate history
    run("tree", "demo", "--images")
    print("\n# deleting snap2 merges base.snap1 and base.snap2 by the cheaper way (dry run first)")
    run("delete", "demo", "snap2", "--dry-run")
    run("delete", "demo", "snap2")
    print("\n# snap1 is a branch point on the user's own disk: its metadata goes, no data moves")
    run("delete", "demo", "snap1")
    run("delete", "demo", "bad name", expect=2)
    run("tree", "demo", "--images")
    run("verify")
    run("log", "demo")
    print("\nfiles now:", ", ".join(sorted(p.name for p in scratch.iterdir())))


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        scratch = Path(argv[1]).absolute()
        scratch.mkdir(parents=True, exist_ok=True)
        play(scratch)
    else:
        with tempfile.TemporaryDirectory(prefix="snapledger-demo-") as tmp:
            play(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
