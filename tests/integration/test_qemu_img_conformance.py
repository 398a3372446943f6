"""Conformance: the same random histories on SimulatedStorage and on real qcow2 files.

Two ledgers run side by side, one over SimulatedStorage and one over QemuImgStorage, with the same
paths. After every operation both must have made the same plan (steps, paths and bytes) or refused
with the same error, record the same state, hold the same files, and every snapshot's frozen image
and every active image must read, cluster by cluster through its real chain, what the simulation
says it reads. At the end of each history every file's facts (format, backing, allocation) agree.

Every write uses a fresh pattern byte, so no two layers of a chain ever hold the same byte in the
same cluster: a safe `qemu-img rebase` (which skips clusters that read the same) then allocates
exactly what the simulation's pull copies, and the plans' byte counts must match.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from qemu_helpers import CLUSTER, make_image, mismatched_clusters, qemu_io, write_clusters

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.errors import SnapledgerError

VM = "vm"
CLUSTERS = 16  # 1 MiB virtual
SIZE = CLUSTERS * CLUSTER

BUILD = {"write": 3.0, "snapshot": 3.0, "revert": 0.5}
MIXED = {"write": 2.0, "snapshot": 1.0, "revert": 1.0, "delete": 3.0, "gc": 0.5}


def random_history(rng: random.Random, length: int) -> list[tuple[Any, ...]]:
    """A history that builds snapshots, then mixes in deletes (snapshot indexes: newest first)."""
    ops: list[tuple[Any, ...]] = []
    for i in range(length):
        weights = BUILD if i < length // 2 else MIXED
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        if kind == "write":
            where = rng.sample(range(CLUSTERS), rng.randint(1, 3))
            ops.append(("write", rng.choice(["vda", "vda", "vdb"]), where))
        elif kind == "snapshot":
            ops.append(("snapshot", rng.random() < 0.2))
        elif kind == "revert":
            ops.append(("revert", rng.randrange(6)))
        elif kind == "delete":
            ops.append((
                "delete",
                rng.choice([0, 1, 1, 2, rng.randrange(8)]),
                rng.choice(["auto", "auto", "commit", "pull"]),
                rng.choice(["forbid", "pull", "pull", "keep"]),
            ))
        else:
            ops.append(("gc", rng.random() < 0.5))
    return ops


class SideBySide:
    def __init__(self, root: Path, say: Callable[[str], None] = print) -> None:
        self.root = root
        self.say = say
        self.sim = SimulatedStorage()
        self.real = QemuImgStorage(allowed_dirs=[str(root)])
        self.patterns = itertools.count(1)
        self.actions: set[str] = set()
        self.refusals: set[str] = set()
        self.names = itertools.count(1)
        template = str(root / "template.qcow2")
        vda, vdb = str(root / "vda.qcow2"), str(root / "vdb.img")
        layout: list[tuple[str, dict[int, int], str | None, str]] = [
            (template, {0: self.pattern(), 5: self.pattern()}, None, "qcow2"),
            (vda, {1: self.pattern(), 5: self.pattern()}, template, "qcow2"),
            (vdb, {2: self.pattern()}, None, "raw"),
        ]
        for path, content, backing, fmt in layout:
            self.sim.make_image(path, SIZE, content, backing=backing, fmt=fmt)
            make_image(path, SIZE, content, backing=backing, fmt=fmt)
        self.ledgers: dict[str, Snapledger] = {}
        for side, storage in (("sim", self.sim), ("real", self.real)):
            ticks = itertools.count()
            clock: Callable[[], str] = lambda ticks=ticks: f"2026-01-01T00:00:00.{next(ticks):06d}+00:00"  # noqa: E731
            self.ledgers[side] = ledger_service(LedgerApplication("memory:"), storage, clock=clock)
        self.both(lambda ledger: ledger.adopt(VM, {"vda": vda, "vdb": vdb}))

    def pattern(self) -> int:
        value = next(self.patterns)
        assert value < 256, "the history is too long for unique pattern bytes"
        return value

    # ---- doing ---------------------------------------------------------------------------

    def both(self, action: Callable[[Snapledger], Any]) -> None:
        """Run `action` on both ledgers; they must do the same thing or refuse the same way."""
        outcomes = []
        for side in ("sim", "real"):
            try:
                result = action(self.ledgers[side])
            except SnapledgerError as error:
                outcomes.append(("refused", type(error).__name__, str(error)))
            else:
                plans = result if isinstance(result, list) else [result]
                outcomes.append(("done", [p.to_dict() for p in plans if p is not None]))
        self.say(f"  -> {outcomes[0]}")
        assert outcomes[0] == outcomes[1]
        if outcomes[0][0] == "done":
            self.actions |= {s["action"] for p in outcomes[0][1] for s in p["steps"]}
        else:
            self.refusals.add(outcomes[0][1])

    def apply(self, op: tuple[Any, ...]) -> None:
        self.say(f"{op}")
        kind = op[0]
        vm = self.ledgers["sim"].vm(VM)
        snapshots = sorted(vm.snapshots, key=lambda n: -int(n[1:]))  # newest first
        if kind == "write":
            _, disk, where = op
            active = vm.disks[disk]
            content = {c: self.pattern() for c in where}
            for cluster, value in content.items():
                self.sim.write(active, cluster, value)
            write_clusters(active, content, fmt=self.sim.files[active].format)
        elif kind == "snapshot":
            name = f"s{next(self.names)}"
            exclude = ["vdb"] if op[1] else []
            self.both(lambda ledger: ledger.snapshot(VM, name, exclude=exclude))
        elif kind == "revert" and snapshots:
            name = op[1] if isinstance(op[1], str) else snapshots[op[1] % len(snapshots)]
            self.both(lambda ledger: ledger.revert(VM, name))
        elif kind == "delete" and snapshots:
            _, index, strategy, branches = op
            name = index if isinstance(index, str) else snapshots[index % len(snapshots)]
            self.both(lambda ledger: ledger.delete(VM, name, strategy, branches))
        elif kind == "gc":
            self.both(lambda ledger: ledger.gc(VM, include_detached=op[1]))

    # ---- checking ------------------------------------------------------------------------

    def check(self) -> None:
        sim, real = self.ledgers["sim"].vm(VM), self.ledgers["real"].vm(VM)
        assert (real.disks, real.current, real.operation) == (sim.disks, sim.current, sim.operation)
        assert {n: s.disks for n, s in real.snapshots.items()} == {
            n: s.disks for n, s in sim.snapshots.items()
        }
        on_disk = {str(self.root / name) for name in os.listdir(self.root)}
        assert on_disk == set(self.sim.files)
        images = set(sim.disks.values()) | {p for s in sim.snapshots.values() for p in s.disks.values()}
        with ThreadPoolExecutor(max_workers=4) as pool:
            wrong = dict(zip(sorted(images), pool.map(self.misread, sorted(images)), strict=True))
        assert not any(wrong.values()), f"clusters reading other bytes than simulated: {wrong}"

    def misread(self, path: str) -> list[int]:
        fmt = self.sim.files[path].format
        expected = self.sim.read_all(path)
        if fmt == "raw":
            commands = [f"read -P {expected.get(c, 0):#x} {c * CLUSTER} {CLUSTER}" for c in range(CLUSTERS)]
            out = qemu_io(path, commands, read_only=True, fmt="raw")
            return [-1] if "Pattern verification failed" in out else []
        return mismatched_clusters(path, expected, CLUSTERS)

    def check_facts(self) -> None:
        for path, image in sorted(self.sim.files.items()):
            facts = self.real.inspect(path)
            seen = (facts.format, facts.backing, facts.backing_format, facts.virtual_size)
            assert seen == (image.format, image.backing, image.backing_format, image.virtual_size), path
            if image.format == "qcow2":
                assert facts.allocated == image.allocated, path
            else:  # qemu-img create writes the first 4 KiB of a raw file (QEMU >= 4.2)
                assert image.allocated <= facts.allocated <= image.allocated + 4096, path


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(6, 12))
def test_simulated_and_real_storage_agree(seed: int, length: int) -> None:
    ops = random_history(random.Random(seed), length)
    with tempfile.TemporaryDirectory(prefix="snapledger-conformance-") as scratch:
        pair = SideBySide(Path(scratch), note)
        pair.check()
        for op in ops:
            pair.apply(op)
            pair.check()
        pair.check_facts()
        for what in sorted(pair.actions | pair.refusals):
            event(what)


def test_a_scripted_history_agrees(tmp_path: Path) -> None:
    """Every kind of merge at least once, whatever hypothesis draws."""
    pair = SideBySide(tmp_path)
    script: list[tuple[Any, ...]] = [
        ("write", "vda", [3]), ("snapshot", False),                          # s1
        ("write", "vda", [4, 5]), ("snapshot", False),                       # s2
        ("write", "vda", [6]), ("write", "vdb", [7]), ("snapshot", False),   # s3
        ("write", "vda", [3, 8]), ("snapshot", True),                        # s4 (vda only)
        ("write", "vda", [9]),
        ("delete", "s3", "commit", "forbid"),  # commit vda.s3 into vda.s2, re-point vda.s4
        ("delete", "s2", "pull", "forbid"),    # pull vda.s1 into vda.s2
        ("delete", "s1", "commit", "forbid"),  # commit vda.s2 into the adopted vda.qcow2
        ("write", "vda", [10]), ("snapshot", False),                         # s5
        ("write", "vda", [11]), ("snapshot", False),                         # s6
        ("write", "vda", [12]), ("revert", "s5"), ("write", "vda", [13]),   # two branches
        ("delete", "s5", "auto", "forbid"),    # refused: a managed branch point
        ("delete", "s5", "pull", "forbid"),    # refused: a strategy is for one child
        ("delete", "s5", "auto", "keep"),
        ("snapshot", False), ("write", "vda", [14]),                         # s7
        ("snapshot", False), ("write", "vda", [15]),                         # s8
        ("revert", "s7"), ("write", "vda", [1]),                             # two branches
        ("delete", "s7", "auto", "pull"),      # pull into both branches
        ("gc", True),
    ]
    for op in script:
        pair.apply(op)
        pair.check()
    pair.check_facts()
    assert pair.actions >= {"create-overlay", "commit", "pull", "rebase-unsafe", "delete-file"}
    assert pair.refusals == {"BranchPointRefused", "StrategyNotAllowed"}
