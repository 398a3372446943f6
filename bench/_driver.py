"""A lean driver of the real aggregates, for building big ledgers quickly in the benchmarks.

It plays the same command sequence as `snapledger.adapters.service.commands.Snapledger` (prepare ->
plan -> record intent and reservations -> carry out each step on SimulatedStorage -> closing
event -> release), with the project's own planners, aggregates, operation lifecycle
(`adapters/service/operation.py`, the very code the service runs) and storage simulation, but keeps
every aggregate in memory instead of reloading it from the store for each command, and leaves
saving to the caller, who saves many aggregates at once (`app.save(*fleet.dirty())`).

So the events are the ones the service records for the same commands; only their interleaving
across aggregates in the notification log differs (each aggregate's own order is the same), which
a LedgerView fold does not depend on.
"""

from __future__ import annotations

import posixpath
import random
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from snapledger.adapters.service.operation import Operations
from snapledger.adapters.service.registrations import Registry, claimed
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import BranchPointRefused, StorageError, StrategyNotAllowed
from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.images import Origin
from snapledger.domain.steps import (
    Plan,
)
from snapledger.domain.vm import VirtualMachine
from snapledger.projections import planners
from snapledger.projections.view import LedgerView


class Clock:
    """Deterministic ISO-8601 times, a few seconds apart."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> str:
        self.now += timedelta(seconds=7)
        return self.now.isoformat(timespec="microseconds")


class Fleet:
    """VMs and image registrations sharing one SimulatedStorage; nothing is saved here."""

    def __init__(self, rng: random.Random, clock: Callable[[], str] | None = None) -> None:
        self.rng = rng
        self.clock = clock or Clock()
        self.storage = SimulatedStorage()
        self.vms: dict[str, VirtualMachine] = {}
        self.registrations: dict[str, ImageRegistration] = {}  # one host: a path is one image
        # the same registrations as a LedgerView holds them (by id, and by path)
        self._by_id: dict[Any, ImageRegistration] = {}
        self._registered: dict[str, list[ImageRegistration]] = {}
        self._touched: dict[Any, Any] = {}
        self.operations = Operations(self, self.storage, self.clock, BenchRunners())

    # ---- bookkeeping -----------------------------------------------------------------

    def _touch(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            self._touched[aggregate.id] = aggregate

    def dirty(self) -> list[Any]:
        """Aggregates with unsaved events since the last call (pass them to app.save)."""
        out = list(self._touched.values())
        self._touched.clear()
        return out

    def view_of(self, vm: VirtualMachine) -> LedgerView:
        """A view holding `vm` alone (and every registration): what its planners need."""
        view = LedgerView()
        view.vms = {vm.name: vm}
        view.registrations, view.registered = self._by_id, self._registered
        return view

    def _op_id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    # ---- commands (service.py's flow) ----------------------------------------------------

    def adopt(self, name: str, disks: Mapping[str, str], pools: list[str] | None = None) -> VirtualMachine:
        images: dict[str, dict[str, Any]] = {}
        allowed = sorted({posixpath.dirname(p) for p in disks.values()} | set(pools or []))
        for _target, path in sorted(disks.items()):
            for i, facts in enumerate(self.storage.inspect_chain(path, allowed)):
                if facts.path in images:
                    continue
                origin = Origin.ADOPTED if i == 0 else Origin.FOUND
                images[facts.path] = {**facts.to_dict(), "origin": origin.value}
        vm = VirtualMachine(
            name=name,
            disks=dict(disks),
            images=list(images.values()),
            pools=sorted(pools or []),
            domain_xml=f"<domain><name>{name}</name></domain>",
            at=self.clock(),
            confined=True,
        )
        self.vms[name] = vm
        self._touch(vm, *(self._claimed(path, name) for path in images))
        return vm

    def guest_writes(self, vm_name: str, clusters: int) -> None:
        """The guest writes some clusters of every active image (sizes change)."""
        vm = self.vms[vm_name]
        for path in sorted(set(vm.disks.values())):
            image = self.storage.files[path]
            top = image.virtual_size // CLUSTER
            for _ in range(clusters):
                self.storage.write(path, self.rng.randrange(top), self.rng.randrange(1, 256))

    def prepare(self, vm_name: str) -> VirtualMachine:
        vm = self.vms[vm_name]
        vm.check_idle()
        vm.observe_images([self.storage.inspect(p) for p in sorted(set(vm.disks.values()))])
        self._touch(vm)
        return vm

    def taken(self, vm: VirtualMachine) -> Callable[[str], bool]:
        return lambda p: p in self.registrations or self.storage.exists(p)

    def snapshot(self, vm_name: str, name: str, *, fail_at: int | None = None) -> Plan:
        vm = self.prepare(vm_name)
        plan = planners.plan_snapshot(self.view_of(vm), vm_name, name, self.taken(vm))
        frozen = {s.disk: vm.disks[s.disk] for s in plan.steps if s.action == "set-active"}  # type: ignore[union-attr]
        details = {"frozen": frozen, "description": f"bench {name}", "domain_xml": vm.domain_xml}
        return self._run(vm, plan, name, details, fail_at)

    def revert(self, vm_name: str, name: str) -> Plan:
        vm = self.prepare(vm_name)
        plan = planners.plan_revert(self.view_of(vm), vm_name, name, self.taken(vm))
        return self._run(vm, plan, name, {}, None)

    def delete(self, vm_name: str, name: str, *, fail_at: int | None = None) -> Plan | None:
        vm = self.prepare(vm_name)
        view = self.view_of(vm)
        try:
            plan = planners.plan_delete(view, vm_name, name)
        except BranchPointRefused:
            way = self.rng.choice(("pull", "keep"))
            try:
                plan = planners.plan_delete(view, vm_name, name, branches=way)
            except StrategyNotAllowed:
                plan = planners.plan_delete(view, vm_name, name, branches="keep")
        return self._run(vm, plan, name, {}, fail_at)

    def gc(self, vm_name: str) -> Plan | None:
        vm = self.prepare(vm_name)
        plan = planners.plan_gc(self.view_of(vm), vm_name)
        return self._run(vm, plan, None, {}, None) if plan.steps else None

    def swap_disk(self, vm_name: str, disk: str, path: str) -> None:
        vm = self.prepare(vm_name)
        planners.plan_swap(self.view_of(vm), vm_name, disk, path)
        chain = self.storage.inspect_chain(path, sorted(vm.allowed_dirs()))
        vm.swap_disk(disk, chain, self.clock())
        self._touch(vm, *(self._claimed(f.path, vm_name) for f in chain))

    def record_drift(self, vm_name: str, path: str) -> None:
        vm = self.vms[vm_name]
        vm.record_drift([f"{path}: size 196608 -> 200704"], self.clock())
        self._touch(vm)

    # ---- the operation lifecycle: the service's own (adapters/service/operation.py) ---------

    def _run(
        self,
        vm: VirtualMachine,
        plan: Plan,
        target: str | None,
        details: dict[str, Any],
        fail_at: int | None,
    ) -> Plan:
        self.operations.start(vm, self._op_id(), plan, target, details)
        if fail_at is not None:
            self.storage.inject(fail_at=fail_at)
        try:
            self.operations.execute(vm)
        except StorageError:
            if vm.operation is not None:  # failed past a destructive step: `recover`
                self.operations.execute(vm)
        finally:
            self.storage.inject()
        return plan

    # ---- Records: where the operation's events go (memory; saved by the caller) -----------

    def save(self, *aggregates: object, unrecorded: str = "nothing was done") -> None:
        for aggregate in aggregates:
            if isinstance(aggregate, ImageRegistration) and aggregate.path not in self.registrations:
                self.registrations[aggregate.path] = aggregate
                self._by_id[aggregate.id] = aggregate
                self._registered[aggregate.path] = [aggregate]
        self._touch(*aggregates)

    def registry(self, vm: VirtualMachine) -> Registry:
        """Every VM of the benchmark lives on one host with no shared storage: a path is one
        image, registered by its path."""
        return Registry(self.registrations.get, lambda _path: "")

    def _claimed(self, path: str, vm_name: str) -> ImageRegistration:
        registration = claimed(self.registry(self.vms[vm_name]), path, vm_name)
        self.save(registration)
        return registration


class BenchRunners:
    """The runner every benchmark operation records: one process that never dies."""

    def this_process(self) -> dict[str, object]:
        return {"host": "bench", "boot": "bench", "pid": 1, "started": 1}

    def running(self, runner: dict[str, object] | None, op_id: str) -> bool | None:
        return False

    def carrying_out(self, op_id: str) -> AbstractContextManager[None]:
        return nullcontext()

    def files_open_here(self) -> set[tuple[int, int]]:
        return set()


def expected_view(fleets: list[Fleet], position: int) -> LedgerView:
    """The state the driver holds, as a LedgerView, to compare with a rebuilt one."""
    view = LedgerView()
    for fleet in fleets:
        view.vms.update(fleet.vms)
        for registration in fleet.registrations.values():
            view.add_registration(registration)
    view.position = position
    return view
