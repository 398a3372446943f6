"""Hypothesis strategies: VM layouts (disks, a template, a shared image) and histories of
operations (snapshot, revert, delete with every option, swap, gc, prune, guest writes, crash
points), as plain data a World (world.py) runs and checks against the byte model.

Operations name snapshots by an index into the VM's snapshots at the time they run (modulo their
number), so any list of them is a history that can run, and shrinks to a shorter one that can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import snapledger.testing.needs  # noqa: F401  (first: a clear error without hypothesis)

# isort: split
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from snapledger.domain.errors import BadName
from snapledger.domain.names import check_disk_target, check_name
from snapledger.testing.model import Content

if TYPE_CHECKING:
    from snapledger.testing.world import World

CLUSTERS = 12  # the clusters a history writes into (every layout's images are this big)
STRATEGIES = ("auto", "commit", "pull")
BRANCHES = ("forbid", "pull", "keep")


@dataclass(frozen=True)
class Disk:
    """One disk of a layout: its own clusters, its format, and whether it rests on the template."""

    name: str
    content: Content
    fmt: str = "qcow2"
    on_template: bool = False


@dataclass(frozen=True)
class Layout:
    """A VM's disks, the template some rest on, and other VMs sharing that template."""

    vm: str
    disks: tuple[Disk, ...]
    template: Content
    sharing: tuple[str, ...] = ()  # VMs adopted over the same template (a shared image)


@dataclass(frozen=True)
class Crash:
    """The process dies at the `at`-th storage call of the operation (after it, if `after`)."""

    at: int
    after: bool = False


@dataclass(frozen=True)
class Op:
    """One step of a history: `kind` is write, snapshot, revert, delete, swap, gc or prune."""

    kind: str
    vm: str
    disk: str = "vda"
    content: Content | None = None  # write, swap: the clusters written
    index: int = 0  # revert, delete, swap (over a snapshot): which snapshot, modulo their number
    strategy: str = "auto"
    branches: str = "forbid"
    flag: bool = False  # snapshot: exclude the other disks; gc: include detached; swap: over a snapshot
    keep_last: int = 1  # prune
    crash: Crash | None = None


def contents(clusters: int = CLUSTERS, max_size: int = 4) -> st.SearchStrategy[Content]:
    return st.dictionaries(st.integers(0, clusters - 1), st.integers(1, 255), max_size=max_size)


def crashes(max_call: int = 4) -> st.SearchStrategy[Crash | None]:
    """No crash, mostly; else a storage call to die at, before or after it."""
    return st.none() | st.builds(Crash, st.integers(1, max_call), st.booleans())


def layouts(vm: str = "vm", max_disks: int = 2, max_sharing: int = 1) -> st.SearchStrategy[Layout]:
    """A VM of 1..max_disks disks (the first maybe raw, or over the template) and maybe up to
    `max_sharing` other VMs (`<vm>-shares<n>`) over the same template."""
    _valid_vm("layouts", vm)
    if not 1 <= max_disks <= 26:
        raise InvalidArgument(f"layouts(max_disks={max_disks!r}): a VM has 1 to 26 disks (vda to vdz)")
    if max_sharing < 0:
        raise InvalidArgument(f"layouts(max_sharing={max_sharing!r}): the VMs sharing the template are 0 or more")
    if max_sharing:
        _valid_vm("layouts", f"{vm}-shares{max_sharing - 1}", "the name of a VM sharing its template")
    return _layouts(vm, max_disks, max_sharing)


@st.composite
def _layouts(draw: st.DrawFn, vm: str, max_disks: int, max_sharing: int) -> Layout:
    count = draw(st.integers(1, max_disks))
    disks = []
    for i in range(count):
        fmt = draw(st.sampled_from(["qcow2", "qcow2", "raw"])) if i == 0 else "qcow2"
        on_template = fmt == "qcow2" and draw(st.booleans())
        disks.append(Disk(f"vd{chr(ord('a') + i)}", draw(contents()), fmt, on_template))
    sharing = tuple(f"{vm}-shares{n}" for n in range(draw(st.integers(0, max_sharing))))
    template = draw(contents(max_size=6).filter(bool))
    return Layout(vm, tuple(disks), template, sharing)


def _valid_vm(where: str, vm: object, what: str = "vm") -> None:
    try:
        check_name("VM", vm)  # type: ignore[arg-type]
    except BadName as bad:
        raise InvalidArgument(f"{where}({what}={vm!r}): {bad}") from None


def histories(
    vm: str | None = "vm", max_ops: int = 20, disks: tuple[str, ...] = ("vda",),
    starting_from: World | None = None, min_ops: int = 0,
) -> st.SearchStrategy[list[Op]]:
    """Lists of `min_ops` to `max_ops` operations on `vm`'s `disks`; `starting_from` a World (a replayed
    history, say), on its VMs (`vm` None: any of them) and their disks."""
    if not 0 <= min_ops <= max_ops:
        raise InvalidArgument(f"histories(min_ops={min_ops!r}, max_ops={max_ops!r}): "
                              "0 <= min_ops <= max_ops")
    if vm is not None:
        _valid_vm("histories", vm)
    if not disks:
        raise InvalidArgument("histories(disks=()): name at least one disk target (vda, ...)")
    for disk in disks:
        try:
            check_disk_target(disk)
        except BadName as bad:
            raise InvalidArgument(f"histories(disks={disks!r}): {bad}") from None
    targets: list[tuple[str, tuple[str, ...]]] = [(vm or "", disks)]
    if starting_from is None and vm is None:
        raise InvalidArgument("histories(vm=None) means any VM of `starting_from`: give starting_from")
    if starting_from is not None:
        live = starting_from.ledger.view.live_vms()
        names = sorted(live) if vm is None else [vm]
        targets = [(n, tuple(sorted(live[n].disks))) for n in names if n in live]
        if not targets:
            have = ", ".join(sorted(live)) or "none"
            raise InvalidArgument(f"histories(vm={vm!r}, starting_from=...): no such live VM in that "
                                  f"World (its live VMs: {have})")
    return st.lists(operations(targets), min_size=min_ops, max_size=max_ops)


@st.composite
def operations(draw: st.DrawFn, targets: list[tuple[str, tuple[str, ...]]]) -> Op:
    """One operation on one of `targets` (a VM and its disks)."""
    vm, disks = draw(st.sampled_from(targets))
    kind = draw(st.sampled_from(
        ["write", "write", "write", "snapshot", "snapshot", "snapshot", "revert", "delete", "delete",
         "swap", "gc", "prune"]
    ))
    disk = draw(st.sampled_from(disks))
    index = draw(st.integers(0, 7))
    if kind in ("write", "swap"):
        return Op(kind, vm, disk, content=draw(contents()), index=index, flag=draw(st.booleans()))
    if kind == "delete":
        return Op(kind, vm, index=index, strategy=draw(st.sampled_from(STRATEGIES)),
                  branches=draw(st.sampled_from(BRANCHES)), crash=draw(crashes()))
    if kind == "prune":
        return Op(kind, vm, keep_last=draw(st.integers(1, 3)),
                  branches=draw(st.sampled_from(BRANCHES)), crash=draw(crashes(6)))
    return Op(kind, vm, index=index, flag=draw(st.booleans()), crash=draw(crashes()))
