"""Render the RFC's two diagrams from real runs: docs/pictures/*.svg and docs/pictures.md.

    python3 docs/pictures/render.py [SCRATCH_DIR]

Needs qemu-img, qemu-io and Graphviz's dot (`bash .ci/setup` installs them) and snapledger
installed. Each scenario of the RFC (summarised in docs/semantics.md,
"Where it comes from: the libvirt RFC") is played on small real qcow2 images with the `snapledger` command itself, as in
tests/unit/test_rfc_diagrams.py; `snapledger export VM --format dot` gives the picture, and
`dot -Tsvg` draws it. The page docs/pictures.md is written from the same runs, with the `tree`
output shown as text, so it never disagrees with the pictures.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "pictures.md"
SNAPLEDGER = [sys.executable, "-m", "snapledger.adapters.cli"]
DEFAULT_SCRATCH = Path("/tmp/rfc")


@dataclass
class Scenario:
    """One scenario in its own directory and store; `shown` collects what the page quotes."""

    name: str
    root: Path
    shown: list[tuple[str, str]] = field(default_factory=list)  # (command line, its output)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SNAPLEDGER_STORE": f"sqlite:///{self.root / 'ledger.sqlite'}"}

    def snapledger(self, *args: str, show: bool = False) -> str:
        done = subprocess.run(
            [*SNAPLEDGER, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"render: snapledger {shlex.join(args)} failed: {done.stderr.strip()}")
        if show:
            out = "\n".join(line.rstrip() for line in done.stdout.rstrip().splitlines())
            self.shown.append((f"snapledger {shlex.join(args)}", out))
        return done.stdout

    def guest_writes(self, image: str, pattern: int, offset_mib: int, mib: int = 1) -> None:
        """What a guest would write into the active image (qemu-io stands in for it)."""
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset_mib}M {mib}M",
             str(self.root / image)],
            check=True, stdout=subprocess.DEVNULL,
        )

    def picture(self, stem: str, vm: str = "vm") -> str:
        """Export the DOT, draw the SVG; returns the SVG's file name."""
        dot = self.snapledger("export", vm, "--format", "dot")
        (HERE / f"{stem}.dot").write_text(dot, encoding="utf-8")
        svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
        (HERE / f"{stem}.svg").write_text(svg.stdout, encoding="utf-8")
        return f"{stem}.svg"


def start(scratch: Path, name: str) -> Scenario:
    root = scratch / name
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    scenario = Scenario(name, root)
    base = root / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    scenario.guest_writes("base.qcow2", 0x11, 0, 4)
    scenario.snapledger("adopt", "vm", "--disk", f"vda={base}")
    return scenario


def block(shown: list[tuple[str, str]]) -> str:
    lines = ["```text"]
    for command, out in shown:
        lines.append(f"$ {command}")
        lines.append(out)
    lines.append("```")
    return "\n".join(lines)


def diagram1(scratch: Path) -> list[str]:
    """base.qcow2 <- base.snap1 <- base.snap2 (the present), then the revert to snap1."""
    s = start(scratch, "diagram1")
    s.snapledger("snapshot", "vm", "snap1")
    s.guest_writes("base.snap1", 0x21, 4, 2)
    s.snapledger("snapshot", "vm", "snap2")
    s.guest_writes("base.snap2", 0x22, 6, 2)
    s.snapledger("tree", "vm", show=True)
    s.snapledger("tree", "vm", "--images", show=True)
    before = s.picture("rfc-diagram1")
    first = block(s.shown)
    s.shown.clear()
    s.snapledger("revert", "vm", "snap1", show=True)
    s.snapledger("tree", "vm", show=True)
    s.snapledger("tree", "vm", "--images", show=True)
    after = s.picture("rfc-diagram1-revert")
    return [
        "## Diagram 1: a chain, and the revert it leads to",
        "",
        "The RFC's first diagram: `base.qcow2` holds snap1, `base.snap1` holds snap2, and the",
        "present runs on `base.snap2`.",
        "",
        first,
        "",
        f"![diagram 1: base.qcow2 <- base.snap1 <- base.snap2]({HERE.name}/{before})",
        "",
        "Reverting to snap1 puts a new overlay, `base.snap1-1` (the RFC's naming), over snap1's",
        "frozen image. The abandoned present `base.snap2` holds no snapshot and nothing else needs",
        "it, so the revert deletes it, as the RFC says it must.",
        "",
        block(s.shown),
        "",
        f"![diagram 1 after reverting to snap1]({HERE.name}/{after})",
    ]


def diagram2(scratch: Path) -> list[str]:
    """snap1, snap2, snap3, then back to snap1: the alternate history."""
    s = start(scratch, "diagram2")
    # what the guest writes after each snapshot (MiB at offset, MiB long): snap1's layer is big
    writes = {"snap1": (4, 3), "snap2": (6, 1), "snap3": (8, 1)}
    for n, (name, (offset, length)) in enumerate(writes.items(), start=1):
        s.snapledger("snapshot", "vm", name)
        s.guest_writes(f"base.{name}", 0x20 + n, offset, length)
    s.snapledger("revert", "vm", "snap1")
    s.guest_writes("base.snap1-1", 0x5A, 12)
    s.snapledger("tree", "vm", show=True)
    s.snapledger("tree", "vm", "--images", show=True)
    s.snapledger("explain", "vm", str(s.root / "base.snap1"), show=True)
    alternate = s.picture("rfc-diagram2")
    first = block(s.shown)
    s.shown.clear()
    s.snapledger("delete", "vm", "snap2", show=True)
    s.snapledger("tree", "vm", "--images", show=True)
    merged = s.picture("rfc-diagram2-delete-snap2")
    return [
        "## Diagram 2: an alternate history",
        "",
        "The RFC's second diagram: snap1, snap2 and snap3 taken in a row, then a revert to snap1.",
        "The revert's new overlay `base.snap1-1` is the alternate history, and `base.qcow2`, which",
        "holds snap1, is now the base of two branches. The abandoned present `base.snap3` was",
        "deleted by the revert.",
        "",
        first,
        "",
        f"![diagram 2: the alternate history base.snap1-1 beside base.snap1 <- base.snap2]"
        f"({HERE.name}/{alternate})",
        "",
        "Deleting snap2 is the RFC's second case: `base.snap1` (snap2's image) and its one child",
        "`base.snap2` are merged the cheaper way, a commit or a pull, and snap3 is then held by",
        "whichever image remains.",
        "",
        block(s.shown),
        "",
        f"![diagram 2 after deleting snap2]({HERE.name}/{merged})",
    ]


HEADER = """# Pictures of the RFC's two diagrams

<!-- Written by docs/pictures/render.py from real runs; run it again rather than editing. -->

These pictures come from real runs. `docs/pictures/render.py` plays each scenario of the RFC
(summarised in [semantics.md](semantics.md#where-it-comes-from-the-libvirt-rfc)) on small qcow2 images with the
`snapledger` command. It then draws the image DAG with `snapledger export vm --format dot | dot -Tsvg`.
The `.dot` files sit beside the SVGs.

How to read a picture:

- Each box is an image file, labelled with its file name, its owner class (managed, adopted or
  read-only), the snapshot it freezes and, for an active image, the disk it is the present of.
- Each arrow points from an image to its backing file. The layout runs right to left, so the
  bottom image sits on the left and the present on the right, as in the RFC's diagrams.
- Fill colour shows the owner class: white is managed (an overlay snapledger made), yellow is
  adopted (the user's own file) and grey is read-only (a template, or shared by VMs).
- A thick blue border marks an active image. A dashed box or arrow marks an image that is
  detached, or that nothing needs any more.
- Node IDs in the DOT are the images' paths. A backslash in a path is written `\\\\`, a double
  quote `\\"` and a newline `\\n`. Each node also carries an `owner` attribute with its owner class,
  and its `tooltip` is the full path.

`snapledger tree vm` draws the snapshot tree the way `virsh snapshot-list --tree` does. The
current snapshot is marked `*current`, and the present hangs below it. `snapledger tree vm --images`
draws the same DAG as the pictures, as text: each image sits above its backing file.
"""


def main(argv: list[str]) -> int:
    scratch = Path(argv[1]).absolute() if len(argv) > 1 else DEFAULT_SCRATCH
    for tool in ("qemu-img", "qemu-io", "dot"):
        if shutil.which(tool) is None:
            raise SystemExit(f"render: {tool} is missing (bash .ci/setup installs it)")
    sections = [HEADER.rstrip(), "", *diagram1(scratch), "", *diagram2(scratch)]
    PAGE.write_text("\n".join(sections) + "\n", encoding="utf-8")
    print(f"wrote {PAGE} and the pictures in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
