"""One random history of the fault campaign: setup, steps, faults, and the oracle.

A history is drawn from its seed: 1-2 VMs of 1-2 disks on small real images (qcow2, sometimes a
raw bottom disk, sometimes over a template in a pool), 5-15 steps of guest writes and snapledger
commands, and a few faults. After every command the exit code, stderr and (for a refusal or a
dry run) every file are judged; after every fault the world is put right, `snapledger recover`
runs, and every snapshot, every present and every file someone else made is read back with
qemu-io against the campaign's own model.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from campaign_bytes import (
    CLUSTER,
    ByteChecker,
    Cell,
    Content,
    blob_cells,
    fingerprint_changes,
    fingerprints,
    write_bytes,
    write_clusters,
    write_region,
)
from campaign_model import (
    BIG_CLUSTERS,
    BIG_REGION,
    FAULT_KINDS,
    SMALL_CLUSTERS,
    DiskModel,
    HistoryResult,
    Intent,
    Violation,
    VmModel,
    Watched,
)
from campaign_world import KillPlan, Run, Scratch, WorldError, snapledger_command

TRACEBACK = "Traceback (most recent call last)"
ENVIRONMENT_PHRASES = ("can't run qemu-img", "No space left", "disk is full", "disk I/O error")
BAD_NAMES = ("bad/name", "a b", ".hidden", "x" * 65, "semi;colon")


class DataLost(Exception):
    """A byte the model says must be there is not: the history's model can't go on."""


class Abort(Exception):
    """The history can't go on (already recorded)."""


class Features:
    """What a history is made of, drawn from its seed."""

    def __init__(self, rng: random.Random) -> None:
        count = rng.choice((1, 2, 2, 3))
        weights = [3, 2, 1.5, 1.5, 1.5, 1.5, 2, 1, 1.5, 1.5]
        self.faults: list[str] = []
        while len(self.faults) < count:
            kind = rng.choices(FAULT_KINDS, weights)[0]
            if kind not in self.faults or kind in ("kill-9", "user-overlay", "hard-link"):
                self.faults.append(kind)
        # a qcow2 header in a raw disk points at another VM's image
        self.vms = 2 if "raw-header" in self.faults else rng.choice((1, 1, 2))
        self.template = rng.random() < (0.6 if self.vms == 2 else 0.25)
        self.template_raw = self.template and rng.random() < 0.3
        self.big = "kill-9-merge" in self.faults
        self.raw_active = "raw-header" in self.faults or rng.random() < 0.2
        self.tmpfs_vm = "enospc-image" in self.faults
        self.tmpfs_ledger = "enospc-ledger" in self.faults
        self.steps = rng.randint(5, 15)

    def describe(self) -> str:
        parts = [f"{self.vms} VM(s)", f"{self.steps} steps", "faults " + ",".join(self.faults)]
        if self.template:
            parts.append("raw template" if self.template_raw else "qcow2 template")
        if self.big:
            parts.append("big disk")
        if self.raw_active:
            parts.append("raw active disk")
        return "; ".join(parts)


class History:
    def __init__(self, seed: int, scratch: Scratch, nobin: str, features_of: dict[str, bool]) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.scratch = scratch
        self.root = scratch.root
        self.nobin = nobin
        self.supports = features_of  # optional commands the installed snapledger has
        self.features = Features(self.rng)
        self.checker = ByteChecker()
        self.result = HistoryResult(seed=seed, seconds=0.0, setup=self.features.describe())
        self.vms: dict[str, VmModel] = {}
        self.watched: dict[str, Watched] = {}
        self.must_exist: dict[str, str] = {}  # the user's own images: gone means data lost
        self.linked: dict[str, str] = {}  # images with a second link: never deleted
        self.raw_paths: set[str] = set()
        self.away: dict[str, str] = {}
        self.pending: list[Intent] = []
        self.disturbances: dict[str, set[str]] = {}
        self.step_index = 0
        self.counter = 0
        self.work = self.root / "work"
        self.work.mkdir()
        self.ledger_dir = self.root / "ledger-fs"
        self.pool: Path | None = None
        self.store = ""

    # ---- findings -------------------------------------------------------------------------

    def violation(self, category: str, kind: str, detail: str, run: Run | None = None) -> None:
        found = Violation(
            category=category, kind=kind, seed=self.seed, step=self.step_index, detail=detail,
            command=run.argv[3:] if run else None, exit_code=run.returncode if run else None,
            stderr=run.stderr if run else "", steps=list(self.result.steps),
            setup=self.result.setup,
        )
        self.result.violations.append(found)

    def lost(self, kind: str, detail: str, run: Run | None = None) -> None:
        self.violation("data lost", kind, detail, run)

    def broken(self, kind: str, detail: str, run: Run | None = None) -> None:
        self.violation("contract broken", kind, detail, run)

    def note(self, text: str) -> None:
        self.result.steps.append(f"{self.step_index}: {text}")

    def fault(self, kind: str) -> None:
        self.result.faults[kind] = self.result.faults.get(kind, 0) + 1

    # ---- running snapledger ---------------------------------------------------------------

    def env(self, without_qemu_img: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPLEDGER_")}
        if without_qemu_img:
            env["PATH"] = self.nobin
        return env

    def snapledger(self, args: list[str], *, kill: KillPlan | None = None,
                   without_qemu_img: bool = False) -> Run:
        argv = [*snapledger_command(), "--store", self.store, *args]
        self.result.commands += 1
        run = self.scratch.run(argv, self.env(without_qemu_img), kill)
        if TRACEBACK in run.stderr:
            self.broken("traceback", "a traceback on stderr", run)
        if run.timed_out:
            self.broken("hang", f"no end after {run.seconds:.0f} s", run)
        return run

    def show(self, vm: VmModel) -> dict[str, Any]:
        run = self.snapledger(["show", vm.name, "--json"])
        if run.returncode != 0:
            self.broken("show-failed", f"show {vm.name} exit {run.returncode}", run)
            raise Abort
        vm.shown = json.loads(run.stdout)
        return vm.shown

    def show_all(self) -> None:
        for vm in self.vms.values():
            self.show(vm)

    def drift_events(self) -> list[str] | None:
        """The summaries of every DriftDetected event in the ledger (None if it can't be read)."""
        run = self.snapledger(["log", "--json"])
        if run.returncode != 0:
            return None
        return [str(e.get("summary")) for e in json.loads(run.stdout)
                if str(e.get("type", "")).endswith("DriftDetected")]

    # ---- formats and contents the campaign knows -----------------------------------------

    def fmt(self, path: str) -> str:
        return "raw" if path in self.raw_paths else "qcow2"

    def known_images(self) -> dict[str, tuple[Content, int]]:
        """Every image whose content the model knows now: presents, snapshots, watched files."""
        out: dict[str, tuple[Content, int]] = {}
        for w in self.watched.values():
            out[w.path] = (w.content, w.clusters)
        for vm in self.vms.values():
            for path, (name, target) in vm.frozen().items():
                if name in vm.snapshots:
                    out[path] = (vm.snapshots[name][target], vm.disks[target].clusters)
            for target in vm.disks:
                out[vm.active(target)] = (vm.present[target], vm.disks[target].clusters)
        return out

    def guest_wrote(self, path: str, cells: dict[int, Cell]) -> None:
        """The campaign wrote `cells` into `path`: every watched file reading through it sees them."""
        for w in self.watched.values():
            if self._reads_through(w, path):
                w.content.update({c: v for c, v in cells.items() if c not in w.own})

    def _reads_through(self, w: Watched, path: str) -> bool:
        seen: set[str] = set()
        current = w.follows
        while current is not None and current not in seen:
            if current == path:
                return True
            seen.add(current)
            below = self.watched.get(current)
            current = below.follows if below else None
        return False

    # ---- setup ------------------------------------------------------------------------------

    def make_image(self, path: Path, clusters: int, fmt: str, cells: dict[int, int],
                   backing: str | None = None) -> str:
        argv = ["qemu-img", "create", "-q", "-f", fmt]
        if backing is not None:
            argv += ["-b", backing, "-F", self.fmt(backing)]
        done = subprocess.run([*argv, str(path), str(clusters * CLUSTER)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise WorldError(f"qemu-img create {path}: {done.stderr.strip()}")
        if fmt == "raw":
            self.raw_paths.add(str(path))
        write_clusters(str(path), fmt, cells)
        return str(path)

    def random_cells(self, clusters: int, count: int) -> dict[int, int]:
        return {self.rng.randrange(min(clusters, SMALL_CLUSTERS)): self.rng.randrange(1, 256)
                for _ in range(count)}

    def setup(self) -> None:
        f = self.features
        if f.tmpfs_ledger:
            self.scratch.mount_tmpfs(self.ledger_dir, 32)
        else:
            self.ledger_dir.mkdir()
        self.store = f"sqlite:///{self.ledger_dir}/ledger.sqlite"
        template: str | None = None
        template_content: Content = {}
        if f.template:
            self.pool = self.root / "pool-fs" / "pool"
            self.pool.mkdir(parents=True)
            fmt = "raw" if f.template_raw else "qcow2"
            cells = self.random_cells(SMALL_CLUSTERS, 4)
            template = self.make_image(self.pool / f"template.{fmt}", SMALL_CLUSTERS, fmt, cells)
            template_content = dict(cells)
            self.watch(template, fmt, template_content, SMALL_CLUSTERS, "a template (read-only)")
            self.must_exist[template] = "a template"
        tmpfs_vm = self.rng.randrange(f.vms) if f.tmpfs_vm else -1
        raw_left = f.raw_active
        for i in range(f.vms):
            name = f"vm{i}"
            fs_root = self.root / f"{name}-fs"
            on_tmpfs = i == tmpfs_vm
            if on_tmpfs:
                self.scratch.mount_tmpfs(fs_root, 1500 if (f.big and i == 0) else 48)
            directory = fs_root / name
            directory.mkdir(parents=True)
            vm = VmModel(name, fs_root, directory, {}, on_tmpfs=on_tmpfs)
            self.vms[name] = vm
            disks = {}
            for j in range(self.rng.choice((1, 1, 2))):
                target = ("vda", "vdb")[j]
                big = f.big and i == 0 and j == 0
                raw = raw_left and not big
                raw_left = raw_left and not raw
                disks[target] = self.make_disk(vm, target, big, raw, template, template_content)
            args = ["adopt", name] + [a for t, p in disks.items() for a in ("--disk", f"{t}={p}")]
            if self.pool is not None:
                args += ["--pool", str(self.pool)]
            run = self.snapledger(args)
            self.note(f"adopt {name} {' '.join(f'{t}={p}' for t, p in disks.items())} -> {run.returncode}")
            if run.returncode != 0:
                self.broken("adopt-failed", f"adopt of fresh images exit {run.returncode}", run)
                raise Abort
            self.show(vm)

    def make_disk(self, vm: VmModel, target: str, big: bool, raw: bool, template: str | None,
                  template_content: Content) -> str:
        clusters = BIG_CLUSTERS if big else SMALL_CLUSTERS
        vm.disks[target] = DiskModel(target, clusters, big)
        cells = self.random_cells(clusters, self.rng.randint(1, 4))
        stem = vm.directory / f"{vm.name}-{target}"
        way = "raw" if raw else self.rng.choice(("qcow2", "qcow2", "over-raw-base", "over-template"))
        if way == "over-template" and (template is None or big):
            way = "qcow2"
        if way == "over-raw-base" and big:
            way = "qcow2"
        content: Content = {}
        if way == "raw":
            path = self.make_image(stem.with_suffix(".raw"), clusters, "raw", cells)
        elif way == "qcow2":
            path = self.make_image(stem.with_suffix(".qcow2"), clusters, "qcow2", cells)
        elif way == "over-template":
            assert template is not None
            content = dict(template_content)
            path = self.make_image(stem.with_suffix(".qcow2"), clusters, "qcow2", cells, template)
        else:
            base_cells = self.random_cells(clusters, 3)
            base = self.make_image(Path(f"{stem}-base.raw"), clusters, "raw", base_cells)
            self.watch(base, "raw", dict(base_cells), clusters, "a raw base below a disk (read-only)")
            self.must_exist[base] = "a raw base below a disk"
            content = dict(base_cells)
            path = self.make_image(stem.with_suffix(".qcow2"), clusters, "qcow2", cells, base)
        content.update(cells)
        vm.present[target] = content
        self.must_exist[path] = f"{vm.name}'s adopted disk {target}"
        return path

    def watch(self, path: str, fmt: str, content: Content, clusters: int, why: str,
              follows: str | None = None, dropped_by_gc_detached: bool = False) -> None:
        self.watched[path] = Watched(path, fmt, dict(content), clusters, why, follows,
                                     dropped_by_gc_detached=dropped_by_gc_detached)

    # ---- the steps --------------------------------------------------------------------------

    def run(self) -> None:
        steps = self.features.steps
        faults = list(self.features.faults)
        at: dict[int, list[str]] = {}
        for kind in faults:
            if kind == "raw-header":  # while the raw disk is still active
                when = 0
            elif kind == "kill-9-merge":  # before other deletes have merged the big data
                when = self.rng.randint(1, min(3, steps - 1))
            else:
                when = self.rng.randint(1, steps - 1)
            at.setdefault(when, []).append(kind)
        if self.features.big:
            self.step_index = 0
            self.big_write()
        for i in range(steps):
            self.step_index = i + 1
            for kind in at.get(i, []):
                self.fault_step(kind)
                self.result.operations += 1
            self.normal_step()
            self.result.operations += 1
        self.step_index += 1
        self.note("final check")
        self.show_all()
        self.check_all()

    def pick_vm(self) -> VmModel:
        return self.vms[self.rng.choice(sorted(self.vms))]

    def normal_step(self) -> None:
        vm = self.pick_vm()
        ops: list[tuple[float, Callable[[VmModel], Intent | None]]] = [
            (3, self.guest_write), (3, self.snapshot_intent), (1.5, self.revert_intent),
            (2.5, self.delete_intent), (0.4, self.swap_intent), (0.6, self.gc_intent),
            (1.2, self.dry_run_intent), (0.3, self.verify_intent), (0.4, self.bad_input_intent),
        ]
        if self.supports.get("reconcile"):
            ops.append((0.3, self.reconcile_intent))
        chosen = self.rng.choices([o for _, o in ops], [w for w, _ in ops])[0]
        intent = chosen(vm)
        if intent is None:
            intent = self.snapshot_intent(vm)
            assert intent is not None
        if intent.kind != "write":
            self.execute(intent)
        if self.pending:
            self.recover()

    # guest writes (no snapledger) ------------------------------------------------------------

    def guest_write(self, vm: VmModel) -> Intent | None:
        target = self.rng.choice(sorted(vm.disks))
        disk = vm.disks[target]
        cells: dict[int, int] = self.random_cells(disk.clusters, self.rng.randint(1, 4))
        if disk.big and self.rng.random() < 0.5:
            cells[self.rng.randrange(BIG_REGION[0], BIG_REGION[0] + BIG_REGION[1])] = 0x5A
        path = vm.active(target)
        self.note(f"guest writes {vm.name}/{target} ({os.path.basename(path)}) {self._cells(cells)}")
        try:
            write_clusters(path, self.fmt(path), cells)
        except Exception as error:
            self.show_all()
            self.check_all()
            self.violation("campaign error", "guest-write-failed", str(error))
            raise Abort from error
        vm.present[target].update(cells)
        self.guest_wrote(path, dict(cells))
        return Intent("write", vm.name, [])

    def big_write(self) -> None:
        """A snapshot, 192 MiB written into the managed overlay it makes, another snapshot: a
        delete of either then has 192 MiB to merge (commit into the adopted disk, or pull)."""
        vm = self.vms["vm0"]
        self.execute(Intent("snapshot", "vm0", ["snapshot", "vm0", self.new_name()],
                            target=f"s{self.counter}"))
        path = vm.active("vda")
        first, count = BIG_REGION
        self.note(f"guest writes {count * CLUSTER >> 20} MiB of 0xab into vm0/vda")
        write_region(path, self.fmt(path), first, count, 0xAB)
        cells: dict[int, Cell] = dict.fromkeys(range(first, first + count), 0xAB)
        vm.present["vda"].update(cells)
        self.guest_wrote(path, cells)
        self.execute(Intent("snapshot", "vm0", ["snapshot", "vm0", self.new_name()],
                            target=f"s{self.counter}"))

    @staticmethod
    def _cells(cells: dict[int, int]) -> str:
        return "{" + ", ".join(f"{c}: {p:#04x}" for c, p in sorted(cells.items())) + "}"

    # snapledger intents ------------------------------------------------------------------

    def new_name(self) -> str:
        self.counter += 1
        return f"s{self.counter}"

    def snapshot_intent(self, vm: VmModel) -> Intent | None:
        if self.supports.get("unnamed-snapshot") and self.rng.random() < 0.2:
            return Intent("snapshot", vm.name, ["snapshot", vm.name, "--json"], target=None)
        name = self.new_name()
        args = ["snapshot", vm.name, name]
        if self.rng.random() < 0.2:
            args += ["--description", f"before step {self.step_index}"]
        return Intent("snapshot", vm.name, args, target=name)

    def existing(self, vm: VmModel) -> str | None:
        names = sorted(vm.snapshots)
        return self.rng.choice(names) if names else None

    def revert_intent(self, vm: VmModel) -> Intent | None:
        name = self.existing(vm)
        if name is None:
            return None
        return Intent("revert", vm.name, ["revert", vm.name, name], target=name)

    def delete_options(self) -> list[str]:
        return self.rng.choices(
            [[], ["--strategy", "commit"], ["--strategy", "pull"], ["--strategy", "auto"],
             ["--branches", "pull"], ["--branches", "keep"]],
            [4, 1.5, 1.5, 0.5, 1.5, 1])[0]

    def delete_intent(self, vm: VmModel) -> Intent | None:
        name = self.existing(vm)
        if name is None:
            return None
        return Intent("delete", vm.name, ["delete", vm.name, name, *self.delete_options()],
                      target=name)

    def swap_intent(self, vm: VmModel) -> Intent | None:
        target = self.rng.choice(sorted(vm.disks))
        disk = vm.disks[target]
        if disk.big:
            return None
        self.counter += 1
        path = vm.directory / f"user{self.counter}.qcow2"
        cells = self.random_cells(disk.clusters, 3)
        self.make_image(path, disk.clusters, "qcow2", cells)
        self.note(f"user makes {path.name} {self._cells(cells)}")
        self.watch(str(path), "qcow2", dict(cells), disk.clusters, "a user's image (not swapped in)")
        return Intent("swap-disk", vm.name, ["swap-disk", vm.name, target, str(path)],
                      disk=target, new_path=str(path))

    def gc_intent(self, vm: VmModel) -> Intent | None:
        args = ["gc"] + ([vm.name] if self.rng.random() < 0.5 else [])
        detached = self.rng.random() < 0.3
        if detached:
            args.append("--include-detached")
        dry = self.rng.random() < 0.3
        if dry:
            args.append("--dry-run")
        return Intent("gc", vm.name if vm.name in args else None, args, dry_run=dry,
                      include_detached=detached)

    def dry_run_intent(self, vm: VmModel) -> Intent | None:
        intent = self.rng.choice((self.delete_intent, self.revert_intent, self.snapshot_intent))(vm)
        if intent is None or intent.target is None:
            return None
        if intent.kind == "snapshot":
            self.counter -= 1
        intent.args.append("--dry-run")
        intent.dry_run = True
        return intent

    def verify_intent(self, vm: VmModel) -> Intent | None:
        return Intent("verify", vm.name, ["verify", vm.name])

    def reconcile_intent(self, vm: VmModel) -> Intent | None:
        dry = self.rng.random() < 0.5
        return Intent("reconcile", vm.name, ["reconcile", vm.name] + (["--dry-run"] if dry else []),
                      dry_run=dry)

    def bad_input_intent(self, vm: VmModel) -> Intent | None:
        some_image = vm.active(sorted(vm.disks)[0])
        args = self.rng.choice([
            ["snapshot", vm.name, self.rng.choice(BAD_NAMES)],
            ["delete", vm.name, "no-such-snapshot"],
            ["revert", vm.name, "no-such-snapshot"],
            ["swap-disk", vm.name, "vdz", some_image],
            ["show", "no-such-vm"],
        ])
        return Intent("bad-input", vm.name, args)

    # ---- one command and its judgement ---------------------------------------------------

    def execute(self, intent: Intent, *, kill: KillPlan | None = None, env_fault: str | None = None,
                dry_exit: int | None = None, held: str | None = None, gone: str | None = None,
                inject: Callable[[], None] | None = None,
                undo: Callable[[], None] | None = None) -> Run:
        """Run `intent` (with `inject` done to the world just before it and `undo` just after)
        and judge it: exit code, stderr, unchanged files and ledger where nothing may change,
        then the model (an exit 0) or the pending list (killed, or exit 1: recover decides)."""
        for vm in self.vms.values():
            intent.before_actives.update({f"{vm.name}/{t}": p for t, p in vm.actives().items()})
        if intent.vm:
            intent.before_names = self.vms[intent.vm].shown_names()
        shown_before = {name: self._essentials(vm.shown) for name, vm in self.vms.items()}
        drift_before = self.drift_events() if env_fault else None
        if inject is not None:
            inject()
        files_before = self.files()
        run = self.snapledger(intent.args, kill=kill, without_qemu_img=env_fault == "no-qemu-img")
        files_after = self.files()
        if undo is not None:
            undo()
        self.note(f"{intent.describe()} -> {'killed' if run.killed else run.returncode}"
                  + (f" [{env_fault or ''}{' held ' + held if held else ''}"
                     f"{' gone ' + gone if gone else ''}]" if env_fault or held or gone else ""))
        if run.killed:
            self.pending.append(intent)
            return run
        self.judge_exit(intent, run, env_fault, dry_exit, held, gone)
        if run.returncode in (2, 3, 4) or intent.reads_only or intent.kind == "reconcile":
            self.judge_unchanged(intent, run, files_before, files_after, shown_before)
        if env_fault and drift_before is not None:
            self.judge_drift(env_fault, dry_exit, drift_before, run)
        if held is not None:
            self.judge_held(intent, run, held, files_before, files_after)
        if run.returncode == 0 and intent.changes_things:
            self.refresh_for(intent)
            self.apply(intent, self.outcome(intent, run), run)
            self.check_all()
        elif run.returncode == 1 and intent.changes_things:
            self.pending.append(intent)
        elif run.returncode in (2, 3, 4) and intent.changes_things:
            if intent.kind == "reconcile":
                self.show_all()  # judge_unchanged refreshed them for every other refusal
            if any(vm.shown.get("operation") for vm in self.vms.values()):
                self.pending.append(intent)  # refused, yet an operation stays open: recover decides
        return run

    @staticmethod
    def _essentials(shown: dict[str, Any]) -> Any:
        """What a refused command must leave as it was: current, disks, snapshots."""
        return {k: shown.get(k) for k in ("current", "disks", "snapshots")}

    def files(self) -> dict[str, tuple[object, ...]]:
        skip = [self.ledger_dir, self.work]
        return {p: f for p, f in fingerprints([self.root], skip).items()
                if ".campaign-filler" not in p}

    def refresh_for(self, intent: Intent) -> None:
        if intent.vm and intent.kind != "gc":
            self.show(self.vms[intent.vm])
        else:
            self.show_all()

    def judge_exit(self, intent: Intent, run: Run, env_fault: str | None, dry_exit: int | None,
                   held: str | None, gone: str | None) -> None:
        rc = run.returncode
        if rc not in (0, 1, 2, 3, 4):
            self.broken("exit-code-outside-contract", f"exit {rc}", run)
            return
        if rc != 0:
            lines = run.stderr.strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("snapledger: error: "):
                self.broken("error-not-one-line", f"{len(lines)} line(s) on stderr", run)
        if intent.kind == "bad-input":
            if rc != 2:
                self.broken("bad-input-not-2", f"bad input gave exit {rc}", run)
            return
        allowed_by_plan = dry_exit is not None and rc == dry_exit
        if env_fault:
            if rc not in (0, 1) and not allowed_by_plan:
                self.broken(f"{env_fault}-exit-{rc}",
                            f"the tool's environment failed ({env_fault}): exit {rc}, expected 1 "
                            f"(the dry run without the fault gave {dry_exit})", run)
            return
        if held is not None:
            if rc == 1 and not allowed_by_plan and "lock" in run.stderr.lower():
                self.broken("in-use-exit-1", f"{held} held open for writing: exit 1, expected 4", run)
            elif rc == 3 and dry_exit == 0:
                self.broken("in-use-exit-3", f"{held} held open for writing: exit 3, expected 4", run)
            return
        if gone is not None:
            if rc in (1, 4) and not allowed_by_plan:
                self.broken(f"gone-exit-{rc}",
                            f"{gone} moved away: exit {rc}, expected 3 (the disk disagrees)", run)
            return
        if rc in (2, 3) and intent.kind in ("snapshot", "revert", "gc", "swap-disk") and not self.disturbed(intent):
            self.broken(f"refused-without-reason-exit-{rc}",
                        f"a valid {intent.kind} refused with nothing disturbed but "
                        f"{sorted(self.harmless_world(intent)) or 'nothing'}", run)
        if rc == 1:
            self.broken("exit-1-in-a-sound-environment",
                        "exit 1 (the tool's environment) with no environment fault", run)
        elif rc == 4:
            self.broken("exit-4-without-conflict",
                        "exit 4 (conflict) with no other process and no open operation", run)

    def judge_drift(self, env_fault: str, dry_exit: int | None, before: list[str], run: Run) -> None:
        """The tool's own troubles are not drift: no DriftDetected event for them."""
        after = self.drift_events()
        if after is None:
            return
        new = after[len(before):]
        about_environment = [d for d in new if any(p in d for p in ENVIRONMENT_PHRASES)]
        if about_environment or (new and dry_exit != 3):
            self.broken("environment-recorded-as-drift",
                        f"{env_fault}: {len(new)} DriftDetected event(s) recorded: {new[0][:300]}", run)

    def judge_unchanged(self, intent: Intent, run: Run, files_before: dict[str, tuple[object, ...]],
                        files_after: dict[str, tuple[object, ...]], shown_before: dict[str, Any]) -> None:
        changes = fingerprint_changes(files_before, files_after)
        why = "dry run" if intent.dry_run else (
            intent.kind if intent.reads_only or intent.kind == "reconcile" else f"refused (exit {run.returncode})")
        if changes:
            self.broken("refused-or-dry-run-changed-files", f"{why}: " + "; ".join(changes[:8]), run)
        if intent.kind in ("reconcile",):
            return
        for name, vm in self.vms.items():
            before = shown_before[name]
            self.show(vm)
            if self._essentials(vm.shown) != before:
                self.broken("refused-or-dry-run-changed-ledger",
                            f"{why}: {name}'s snapshots/disks/current changed", run)

    def judge_held(self, intent: Intent, run: Run, held: str, files_before: dict[str, tuple[object, ...]],
                   files_after: dict[str, tuple[object, ...]]) -> None:
        if run.returncode != 0:
            return
        if held not in files_after:
            self.broken("in-use-image-deleted", f"{held} was held open for writing and is gone", run)
        elif files_before.get(held) != files_after.get(held):
            self.broken("in-use-image-written", f"{held} was held open for writing and changed", run)
        for vm in self.vms.values():
            self.show(vm)
            now_active = set(vm.actives().values())
            was_active = {p for k, p in intent.before_actives.items() if k.startswith(vm.name + "/")}
            if held in was_active and held not in now_active and held in vm.frozen():
                self.broken("in-use-image-frozen", f"{held} was held open for writing and is now frozen", run)

    def disturbed(self, intent: Intent) -> bool:
        """Whether the world did something to this command's VM(s) that may make snapledger
        refuse rightly (a hard link: never written; a file moved away and back: new ctime)."""
        vms = [self.vms[intent.vm]] if intent.vm else list(self.vms.values())
        return any(self.disturbances.get(vm.name, set()) & {"hard-link", "vanish"} for vm in vms)

    def harmless_world(self, intent: Intent) -> set[str]:
        vms = [self.vms[intent.vm]] if intent.vm else list(self.vms.values())
        return set().union(*(self.disturbances.get(vm.name, set()) for vm in vms))

    def disturb(self, path: str, kind: str) -> None:
        """The world did `kind` to `path`: every VM whose directory or pool holds it is disturbed."""
        for vm in self.vms.values():
            if path.startswith(str(vm.directory) + "/") or (self.pool and path.startswith(str(self.pool) + "/")):
                self.disturbances.setdefault(vm.name, set()).add(kind)

    # ---- what happened ------------------------------------------------------------------------

    def outcome(self, intent: Intent, run: Run | None) -> bool:
        """Whether `intent` happened, as the ledger says (after an exit 0, or after recover)."""
        vm = self.vms[intent.vm] if intent.vm else None
        if intent.kind == "snapshot" and vm is not None:
            if intent.target is None:
                return len(vm.shown_names() - intent.before_names - set(vm.snapshots)) > 0
            return intent.target in vm.shown_names()
        if intent.kind == "delete" and vm is not None:
            return intent.target not in vm.shown_names()
        if intent.kind == "revert" and vm is not None:
            changed = [t for t in vm.disks
                       if vm.active(t) != intent.before_actives.get(f"{vm.name}/{t}")]
            if changed and len(changed) != len(vm.disks):
                self.broken("half-done", f"revert {intent.target}: only {changed} have new overlays", run)
            return bool(changed) and vm.shown.get("current") == intent.target
        if intent.kind == "swap-disk" and vm is not None and intent.disk is not None:
            return vm.active(intent.disk) == intent.new_path
        return True

    def apply(self, intent: Intent, done: bool, run: Run | None) -> None:
        """Bring the model to what `intent` did (or didn't)."""
        if intent.dry_run:
            return
        vm = self.vms[intent.vm] if intent.vm else None
        if run is not None and run.returncode == 0 and not done and intent.kind != "gc":
            self.broken("exit-0-but-not-done", f"{intent.describe()} exit 0, ledger says not done", run)
        if intent.kind == "gc" and intent.include_detached:
            for path in [p for p, w in self.watched.items() if w.dropped_by_gc_detached]:
                del self.watched[path]
        if not done or vm is None:
            return
        if intent.kind == "snapshot":
            name = intent.target
            if name is None:
                name = sorted(vm.shown_names() - intent.before_names - set(vm.snapshots))[0]
            vm.snapshots[name] = {t: dict(c) for t, c in vm.present.items()}
        elif intent.kind == "revert" and intent.target is not None:
            self.left_behind(vm, intent, "abandoned by a revert")
            vm.present = {t: dict(c) for t, c in vm.snapshots[intent.target].items()}
        elif intent.kind == "delete" and intent.target is not None:
            vm.snapshots.pop(intent.target, None)
        elif intent.kind == "swap-disk" and intent.disk is not None and intent.new_path is not None:
            old = intent.before_actives[f"{vm.name}/{intent.disk}"]
            self.keep_detached(vm, intent.disk, old)
            user = self.watched.pop(intent.new_path)
            vm.present[intent.disk] = dict(user.content)
            self.must_exist[intent.new_path] = f"{vm.name}'s swapped-in disk"

    def left_behind(self, vm: VmModel, intent: Intent, why: str) -> None:
        """Adopted images a revert abandons are never deleted: they must still read as they did."""
        for target in vm.disks:
            old = intent.before_actives[f"{vm.name}/{target}"]
            if old in self.must_exist and old not in self.watched:
                self.watch(old, self.fmt(old), vm.present[target], vm.disks[target].clusters,
                           f"an adopted image {why}")

    def keep_detached(self, vm: VmModel, target: str, old: str) -> None:
        adopted = old in self.must_exist
        if old not in self.watched:
            self.watch(old, self.fmt(old), vm.present[target], vm.disks[target].clusters,
                       "a swapped-out (detached) image", dropped_by_gc_detached=not adopted)

    # ---- the byte oracle ----------------------------------------------------------------------

    def check_all(self) -> None:
        """Every snapshot, every present and every watched file reads as the model says."""
        problems_before = len(self.result.violations)
        for vm in self.vms.values():
            self.check_vm(vm)
        for w in list(self.watched.values()):
            if w.path in self.away:
                continue
            if not os.path.exists(w.path):
                self.lost("watched-file-gone", f"{w.why} {w.path} is gone")
                continue
            for problem in self.checker.check(w.path, w.fmt, w.content, w.clusters):
                self.lost("watched-file-bytes", f"{w.why} {w.path}: {problem}")
        for path, why in self.must_exist.items():
            if path not in self.away and not os.path.exists(path) and path not in self.watched:
                self.lost("adopted-image-gone", f"{why} {path} is gone")
        for path, link in list(self.linked.items()):
            if path not in self.away and not os.path.exists(path):
                self.broken("hard-linked-image-deleted",
                            f"{path} had a second link ({link}) and was deleted (its bytes live on "
                            "in the link)")
                del self.linked[path]
        self.result.bytes_read = self.checker.bytes_read
        self.result.bytes_vouched = self.checker.bytes_vouched
        if any(v.category == "data lost" for v in self.result.violations[problems_before:]):
            raise DataLost

    def check_vm(self, vm: VmModel) -> None:
        shown = {str(s["name"]): s for s in vm.shown.get("snapshots", [])}
        for name in sorted(set(vm.snapshots) - set(shown)):
            self.lost("snapshot-missing", f"{vm.name}: snapshot {name} is no longer listed")
        for name in sorted(set(shown) - set(vm.snapshots)):
            self.broken("snapshot-unexpected", f"{vm.name}: snapshot {name} listed, never taken")
        for name in sorted(set(shown) & set(vm.snapshots)):
            frozen = shown[name]["disks"]
            for target, content in vm.snapshots[name].items():
                if target not in frozen:
                    self.lost("snapshot-disk-missing", f"{vm.name}: {name} lost disk {target}")
                    continue
                self.check_image(f"{vm.name}: snapshot {name} {target}", frozen[target], content,
                                 vm.disks[target].clusters, "snapshot-bytes")
        for target, content in vm.present.items():
            self.check_image(f"{vm.name}: present {target}", vm.active(target), content,
                             vm.disks[target].clusters, "present-bytes")

    def check_image(self, what: str, path: str, content: Content, clusters: int, kind: str) -> None:
        if not os.path.exists(path):
            self.lost(kind, f"{what}: {path} does not exist")
            return
        for problem in self.checker.check(path, self.fmt(path), content, clusters):
            self.lost(kind, f"{what} ({path}): {problem}")

    # ---- recovery ---------------------------------------------------------------------------

    def recover(self, *, holder_first: str | None = None) -> None:
        """Run `recover` until it is done, learn what the interrupted commands did, check."""
        self.result.recoveries += 1
        if self.rng.random() < 0.15:
            self.fault("kill-9")
            run = self.snapledger(["recover"], kill=KillPlan(self.rng.uniform(0.1, 0.7)))
            self.note(f"snapledger recover, killed at random -> {'killed' if run.killed else run.returncode}")
        if holder_first is not None:
            run = self.snapledger(["recover"])
            self.note(f"snapledger recover (while {holder_first} is held) -> {run.returncode}")
            if run.returncode not in (0, 4):
                self.broken("recover-while-held", f"exit {run.returncode}, expected 0 or 4", run)
            self.scratch.release_all()
        for attempt in range(4):
            run = self.snapledger(["recover"] + ([] if self.rng.random() < 0.7 else ["--json"]))
            self.note(f"snapledger recover -> {run.returncode}")
            if run.returncode == 0:
                break
            if run.returncode == 4 and attempt < 3:
                time.sleep(0.5)
                continue
            self.broken("recover-failed", f"recover exit {run.returncode}", run)
            break
        self.show_all()
        for vm in self.vms.values():
            if vm.shown.get("operation"):
                self.broken("operation-left-open", f"{vm.name}: {vm.shown['operation']}")
        pending, self.pending = self.pending, []
        for intent in pending:
            self.apply(intent, self.outcome(intent, None), None)
        self.check_all()

    # ---- faults ------------------------------------------------------------------------------

    def fault_step(self, kind: str) -> None:
        handlers: dict[str, Callable[[], bool]] = {
            "kill-9": self.kill_at_random, "kill-9-merge": self.kill_mid_merge,
            "enospc-image": self.images_full, "enospc-ledger": self.ledger_full,
            "user-overlay": self.user_overlay, "hard-link": self.hard_link,
            "holder": self.hold_image, "raw-header": self.raw_header, "vanish": self.vanish,
            "no-qemu-img": self.no_qemu_img,
        }
        if handlers[kind]():
            self.fault(kind)

    def mutating_intent(self, vm: VmModel, kinds: Iterable[str] = ("snapshot", "revert", "delete", "gc")) -> Intent:
        makers: dict[str, Callable[[VmModel], Intent | None]] = {
            "snapshot": self.snapshot_intent, "revert": self.revert_intent,
            "delete": self.delete_intent, "gc": self.gc_intent, "swap-disk": self.swap_intent,
        }
        choices = list(kinds)
        self.rng.shuffle(choices)
        for kind in choices:
            intent = makers[kind](vm)
            if intent is not None and not intent.dry_run:
                return intent
        intent = self.snapshot_intent(vm)
        assert intent is not None
        return intent

    def dry_exit(self, intent: Intent) -> int | None:
        """The exit code of the same command as a dry run, before the fault."""
        if intent.kind == "verify":
            return self.snapledger(intent.args).returncode
        if intent.kind not in ("snapshot", "revert", "delete", "gc"):
            return None
        if intent.kind == "snapshot" and intent.target is None:
            return None
        return self.snapledger([*intent.args, "--dry-run"]).returncode

    def kill_at_random(self) -> bool:
        vm = self.pick_vm()
        intent = self.mutating_intent(vm, ("snapshot", "revert", "delete", "gc", "swap-disk"))
        self.execute(intent, kill=KillPlan(self.rng.uniform(0.15, 0.9)))
        self.recover()
        return True

    def kill_mid_merge(self) -> bool:
        vm = self.vms["vm0"]
        candidates = []
        for name in sorted(vm.snapshots)[:4]:
            for options in ([], ["--strategy", "pull"], ["--branches", "pull"]):
                run = self.snapledger(["delete", vm.name, name, *options, "--dry-run", "--json"])
                if run.returncode == 0 and json.loads(run.stdout).get("bytes_moved", 0) >= 32 << 20:
                    candidates.append((name, options))
                    break
        if not candidates:
            self.note("no delete would move 32 MiB: a kill at random instead")
            self.kill_at_random()
            self.fault("kill-9")
            return False
        name, options = self.rng.choice(candidates)
        self.note(f"delete {name} {' '.join(options)} would move 32 MiB or more")
        intent = Intent("delete", vm.name, ["delete", vm.name, name, *options], target=name)
        run = self.execute(intent, kill=KillPlan(self.rng.uniform(0.0, 0.3), during_merge=True))
        self.note(f"merge seen running: {run.merge_seen}")
        self.recover()
        if run.killed and run.merge_seen:
            return True
        self.fault("kill-9-merge-missed")
        return False

    def images_full(self) -> bool:
        vm = next((v for v in self.vms.values() if v.on_tmpfs), None)
        if vm is None:
            return False
        intent = self.mutating_intent(vm, ("snapshot", "revert", "delete"))
        dry = self.dry_exit(intent)
        big = any(d.big for d in vm.disks.values())
        leave = self.rng.choice((0, 16 << 10, 128 << 10, 512 << 10) + ((16 << 20, 64 << 20) if big else ()))
        self.note(f"{vm.fs_root.name} filled to {leave} bytes free")
        self.execute(intent, env_fault="enospc-image", dry_exit=dry,
                     inject=lambda: self.scratch.fill(vm.fs_root, leave),
                     undo=lambda: self.scratch.unfill(vm.fs_root))
        self.recover()
        return True

    def ledger_full(self) -> bool:
        vm = self.pick_vm()
        if self.rng.random() < 0.25:
            intent = self.verify_intent(vm)
            assert intent is not None
        else:
            intent = self.mutating_intent(vm)
        dry = self.dry_exit(intent)
        leave = self.rng.choice((0, 4096, 32 << 10))
        self.note(f"the ledger's filesystem filled to {leave} bytes free")
        self.execute(intent, env_fault="enospc-ledger", dry_exit=dry,
                     inject=lambda: self.scratch.fill(self.ledger_dir, leave),
                     undo=lambda: self.scratch.unfill(self.ledger_dir))
        self.recover()
        return True

    def no_qemu_img(self) -> bool:
        vm = self.pick_vm()
        intent = self.mutating_intent(vm)
        dry = self.dry_exit(intent)
        self.execute(intent, env_fault="no-qemu-img", dry_exit=dry)
        self.recover()
        return True

    def image_of(self, vm: VmModel) -> tuple[str, Content, int] | None:
        known = self.known_images()
        mine = [p for p in known if p.startswith(str(vm.directory) + "/") or (self.pool and p.startswith(str(self.pool)))]
        mine = [p for p in mine if os.path.exists(p) and "/backup/" not in p]
        if not mine:
            return None
        path = self.rng.choice(sorted(mine))
        content, clusters = known[path]
        return path, content, clusters

    def hold_image(self) -> bool:
        vm = self.pick_vm()
        picked = self.image_of(vm)
        if picked is None:
            return False
        path = picked[0]
        if self.rng.random() < 0.5:  # most often a running VM's own disk: its active image
            path = vm.active(self.rng.choice(sorted(vm.disks)))
        intent = self.mutating_intent(vm)
        dry = self.dry_exit(intent)
        self.note(f"another process holds {os.path.basename(path)} open for writing")
        self.execute(intent, dry_exit=dry, held=path,
                     inject=lambda: self.scratch.hold(path, self.fmt(path)))
        if self.rng.random() < 0.5:
            self.recover(holder_first=path)
        else:
            self.scratch.release_all()
            self.recover()
        return True

    def vanish(self) -> bool:
        vm = self.pick_vm()
        picked = self.image_of(vm)
        if picked is None:
            return False
        path = picked[0]
        intent = self.mutating_intent(vm)
        dry = self.dry_exit(intent)
        away_dir = Path(path).parent.parent / "away"
        away_dir.mkdir(exist_ok=True)
        away = str(away_dir / os.path.basename(path))

        def move_away() -> None:
            self.disturb(path, "vanish")
            os.rename(path, away)
            self.away[path] = away

        def put_back() -> None:
            del self.away[path]
            if os.path.exists(path):
                self.broken("path-reused", f"{path} exists again while the user's file was away")
                raise Abort
            os.rename(away, path)

        self.note(f"the user moves {os.path.basename(path)} away")
        self.execute(intent, dry_exit=dry, gone=path, inject=move_away, undo=put_back)
        self.note(f"the user puts {os.path.basename(path)} back")
        self.recover()
        return True

    def user_overlay(self) -> bool:
        vm = self.pick_vm()
        picked = self.image_of(vm)
        if picked is None:
            return False
        path, content, clusters = picked
        self.counter += 1
        hand = str(vm.directory / f"hand{self.counter}.qcow2")
        hand2 = str(vm.directory / f"hand{self.counter}b.qcow2")
        for top, below in ((hand, path), (hand2, hand)):
            done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", below, "-F",
                                   self.fmt(below), top], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise WorldError(f"qemu-img create {top}: {done.stderr.strip()}")
        self.watch(hand, "qcow2", content, clusters, "a user's overlay", follows=path)
        self.watch(hand2, "qcow2", content, clusters, "a user's second-level overlay", follows=hand)
        own = self.random_cells(clusters, 2)
        write_clusters(hand2, "qcow2", own)
        self.watched[hand2].content.update(own)
        self.watched[hand2].own.update(own)
        self.disturb(path, "user-overlay")
        self.note(f"the user makes {os.path.basename(hand)} over {os.path.basename(path)} and "
                  f"{os.path.basename(hand2)} over it, writes {self._cells(own)} into the latter")
        self.check_all()
        return True

    def hard_link(self) -> bool:
        vm = self.pick_vm()
        picked = self.image_of(vm)
        if picked is None:
            return False
        path, content, clusters = picked
        backup = Path(path).parent / "backup"
        backup.mkdir(exist_ok=True)
        self.counter += 1
        link = str(backup / f"{os.path.basename(path)}.{self.counter}")
        os.link(path, link)
        self.watch(link, self.fmt(path), content, clusters, "a hard link the user made", follows=path)
        self.linked[path] = link
        self.disturb(path, "hard-link")
        self.note(f"the user hard-links {os.path.basename(path)} as backup/{os.path.basename(link)}")
        return True

    def raw_header(self) -> bool:
        """The guest writes a qcow2 header (backed by another VM's image) into a raw disk."""
        for vm in self.vms.values():
            for target in sorted(vm.disks):
                path = vm.active(target)
                if path in self.raw_paths:
                    self.write_header(vm, target, path)
                    return True
        return False

    def write_header(self, vm: VmModel, target: str, path: str) -> None:
        others = [v.active(t) for v in self.vms.values() for t in v.disks if v.active(t) != path]
        other = self.rng.choice(others) if others else next(iter(self.watched), path)
        header = self.work / f"header{self.step_index}.qcow2"
        clusters = vm.disks[target].clusters
        done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", other, "-F",
                               self.fmt(other), str(header), str(clusters * CLUSTER)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise WorldError(f"qemu-img create {header}: {done.stderr.strip()}")
        cells = blob_cells(header.read_bytes())
        data = b"".join(c for c in cells.values() if isinstance(c, bytes))
        write_bytes(path, "raw", 0, data)
        vm.present[target].update(cells)
        self.guest_wrote(path, dict(cells))
        self.disturb(path, "raw-header")
        self.note(f"the guest writes a qcow2 header backed by {os.path.basename(other)} at offset 0 "
                  f"of raw {os.path.basename(path)} ({len(cells)} clusters)")


def run_history(seed: int, scratch: Scratch, nobin: str, supports: dict[str, bool]) -> HistoryResult:
    started = time.monotonic()
    history = History(seed, scratch, nobin, supports)
    try:
        history.setup()
        history.run()
    except (DataLost, Abort):
        pass
    except WorldError as error:
        history.violation("campaign error", "world", str(error))
    except Exception as error:  # a campaign bug: say so, never as a product finding
        history.violation("campaign error", type(error).__name__, repr(error))
    history.result.seconds = time.monotonic() - started
    history.result.bytes_read = history.checker.bytes_read
    history.result.bytes_vouched = history.checker.bytes_vouched
    return history.result
