"""LedgerView: every aggregate of the ledger, folded from its events in ledger order.

The same `@event` bodies that ran when a command was accepted run here again, so the view is
the ledger's state by construction. It can be built in one pass over the whole notification log
or kept up to date event by event; both must give the same state (`canonical()` compares them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, is_dataclass
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEventProtocol

from snapledger.domain.errors import LedgerDamaged, UnknownVm
from snapledger.domain.image_registry import ImageRegistration, image_id
from snapledger.domain.ledger_hash import UNKNOWN_HOST
from snapledger.domain.names import is_within
from snapledger.domain.vm import VirtualMachine

from .dag_index import changes_before, share_index


class LedgerView:
    def __init__(self) -> None:
        self.vms: dict[str, VirtualMachine] = {}
        # every image registration by id, and by path (one path may name a file on each host)
        self.registrations: dict[UUID, ImageRegistration] = {}
        self.registered: dict[str, list[ImageRegistration]] = {}
        # the registrations some VM uses now, kept as events apply: what a scan for unknown
        # files compares with, without walking every image the ledger ever registered
        self.in_use: dict[UUID, ImageRegistration] = {}
        self._by_id: dict[UUID, Aggregate] = {}
        self.position = 0  # the ledger position of the last event applied
        self.version = 0  # bumped on every change, for caches of derived views
        # For the persisted projection (adapters/checkpoint/persisted.py): the position of each
        # aggregate's first event (restoring in that order keeps `vms` in ledger order), and
        # the aggregates changed since the last checkpoint.
        self.born: dict[UUID, int] = {}
        self.dirty: set[UUID] = set()
        # A lazy view (a checkpoint restored without the registrations no VM uses, persisted.py)
        # looks those up by id when it needs one: `lookup` gives an aggregate as recorded now,
        # possibly a few events ahead of `position`; applying those events again is skipped.
        # None: the view holds every aggregate of the ledger.
        # With each aggregate, the position of its first event (where it was born).
        self.lookup: Callable[[UUID], tuple[Aggregate, int] | None] | None = None
        self._absent: set[UUID] = set()  # looked up and not recorded (until an event makes it)
        self._looked_up: set[UUID] = set()

    def apply(self, event: DomainEventProtocol[UUID], position: int) -> None:
        aggregate = self._by_id.get(event.originator_id)
        if aggregate is None and self.lookup is not None and event.originator_version > 1:
            aggregate = self._looked_up_now(event.originator_id)
        if (
            aggregate is not None
            and aggregate.id in self._looked_up
            and event.originator_version <= aggregate.version
        ):
            self.position = position  # looked up after this event was recorded: already in it
            return
        change = changes_before(aggregate, event) if isinstance(aggregate, VirtualMachine) else None
        try:
            aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
        except Exception as error:  # a stored fact that can't be applied was changed under us
            raise LedgerDamaged(
                f"the event at ledger position {position} can't be applied "
                f"({type(error).__name__}: {error}); run `snapledger verify`"
            ) from error
        if change is not None and isinstance(aggregate, VirtualMachine):
            change.after(aggregate)
        if aggregate is not None:
            self.dirty.add(aggregate.id)
            if aggregate.id not in self._by_id:
                self._add(aggregate, position)
            elif isinstance(aggregate, ImageRegistration):
                self._index_use(aggregate)
        self.position = position
        self.version += 1

    def apply_all(self, events: Iterable[tuple[DomainEventProtocol[UUID], int]]) -> None:
        for event, position in events:
            self.apply(event, position)

    @classmethod
    def restored(cls, aggregates: Iterable[tuple[Aggregate, int]], position: int) -> LedgerView:
        """The view at `position` from its aggregates (each with the position of its first
        event, in that order): what a checkpoint holds. Nothing is dirty."""
        view = cls()
        for aggregate, born in aggregates:
            view._add(aggregate, born)
        view.position = position
        return view

    def _add(self, aggregate: Aggregate, born: int) -> None:
        self._absent.discard(aggregate.id)
        self._by_id[aggregate.id] = aggregate
        self.born[aggregate.id] = born
        if isinstance(aggregate, VirtualMachine):
            # a name adopted again after `retire`: the newer VM (born later) is the one by name
            self.vms[aggregate.name] = aggregate
        elif isinstance(aggregate, ImageRegistration):
            self.add_registration(aggregate)

    def add_registration(self, registration: ImageRegistration) -> None:
        held = self.registrations.get(registration.id)
        if held is registration:
            return
        # A registration a `replacing` copy looked up sits in the shared dicts but not in this
        # view's _by_id: looked up again (newer), it replaces the one held, never beside it.
        self.registrations[registration.id] = registration
        same_path = self.registered.setdefault(registration.path, [])
        if held is not None:
            same_path[:] = [r for r in same_path if r.id != registration.id]
        same_path.append(registration)
        self._index_use(registration)

    def _index_use(self, registration: ImageRegistration) -> None:
        if registration.users:
            self.in_use[registration.id] = registration
        else:
            self.in_use.pop(registration.id, None)

    def aggregates(self) -> dict[UUID, Aggregate]:
        """Every aggregate by id, in the order of their first events (read-only)."""
        return self._by_id

    def vm(self, name: str) -> VirtualMachine:
        """The VM of that name (the newest, after a retire): the one lookup of a VM by name."""
        try:
            return self.vms[name]
        except KeyError:
            raise UnknownVm(f"no VM named {name!r} in the ledger") from None

    def live_vms(self) -> dict[str, VirtualMachine]:
        """The VMs still tracked (not retired): the ones whose images are held."""
        return {name: vm for name, vm in self.vms.items() if vm.retired is None}

    def _looked_up_now(self, aggregate_id: UUID) -> Aggregate | None:
        if self.lookup is None or aggregate_id in self._absent:
            return None
        found = self.lookup(aggregate_id)
        if found is None:
            self._absent.add(aggregate_id)
            return None
        aggregate, born = found
        self._looked_up.add(aggregate.id)
        self._add(aggregate, born)
        return aggregate

    def look_up(self, aggregate_id: UUID) -> Aggregate | None:
        """The aggregate of that id: held, or (a lazy view) looked up and held from then on."""
        return self._by_id.get(aggregate_id) or self._looked_up_now(aggregate_id)

    def registrations_of(self, path: str, host: str | None = None) -> list[ImageRegistration]:
        """The registrations of `path` the view holds. A lazy view first looks up the ones a
        question about `host`'s view of `path` needs, by their ids: the path's own (shared
        storage, or made before hosts) and `host`'s (its own storage); with no host, every
        host's that some VM lives on (a registration is only ever made for a VM)."""
        if self.lookup is not None:
            hosts = [host] if host else sorted({vm.home for vm in self.vms.values()} - {"", UNKNOWN_HOST})
            for wanted in {image_id(path), *(image_id(path, h) for h in hosts)}:
                if wanted not in self._by_id:
                    self._looked_up_now(wanted)
        return self.registered.get(path, [])

    def registration(self, path: str, host: str = "") -> ImageRegistration | None:
        """The registration whose id is (host, path): looked up if a lazy view lacks it."""
        wanted = image_id(path, host)
        found = self.registrations.get(wanted)
        if found is None and self.lookup is not None:
            self.registrations_of(path, host or None)
            found = self.registrations.get(wanted)
        return found

    def users_of(self, path: str, host: str | None = None) -> set[str]:
        """The VMs registered as using `path`: on every host (`host` None: a shared image), or
        `host`'s own file (with registrations made without a host)."""
        users: set[str] = set()
        for registration in self.registrations_of(path, host):
            if host is None or registration.host in (host, "", UNKNOWN_HOST):
                users |= registration.users
        return users

    def ever_used(self, path: str, host: str | None = None, shared: tuple[str, ...] = ()) -> bool:
        """Whether the ledger ever used `path` (`host`: on that host's own storage or on shared
        storage; a path another host used on its own storage is free here). Every image a VM
        takes up is registered and a registration is never removed, so this is a lookup, not a
        walk over the history (issue 13)."""
        registrations = self.registrations_of(path, host)
        if host is None or (registrations and is_within(path, shared)):
            return bool(registrations)
        return any(r.host in (host, "", UNKNOWN_HOST) for r in registrations)

    def canonical(self) -> dict[str, Any]:
        """Plain data for comparing two views: the VMs and the live registrations (a lazy view
        holds no others until it needs them; `registrations_of` compares those)."""
        return {
            "vms": {name: _plain(vm.__dict__) for name, vm in sorted(self.vms.items())},
            "images": {
                str(reg.id): _plain(reg.__dict__) for reg in sorted(
                    self.registrations.values(), key=lambda r: str(r.id)
                ) if reg.live
            },
            "position": self.position,
        }


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **_plain(asdict(value))}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and type(value).__module__.startswith("snapledger"):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


_A = TypeVar("_A", bound=Aggregate)
_CONTAINERS = (dict, list, set)


def private_copy(aggregate: _A) -> _A:
    """A copy of a view's aggregate that a command may change (its `@event` methods) without
    touching the view. One level deep is enough: the domain replaces the records it holds
    (frozen dataclasses, tuples, strings) and never changes one in place, so only the
    aggregate's own containers are copied; the state machine checks that a copy acts exactly
    like the aggregate loaded from its events (tests/unit/test_ledger_state_machine.py)."""
    clone = object.__new__(type(aggregate))
    clone.__dict__.update(
        (key, value.copy() if type(value) in _CONTAINERS else value)
        for key, value in aggregate.__dict__.items()
    )
    if isinstance(aggregate, VirtualMachine):
        share_index(aggregate, clone)  # type: ignore[arg-type]
    return clone


def replacing(view: LedgerView, vm: VirtualMachine) -> LedgerView:
    """A view like `view` but holding `vm` (freshly loaded, maybe with unsaved events)."""
    copy = LedgerView()
    copy.vms = {**view.vms, vm.name: vm}
    copy.registrations = view.registrations
    copy.registered = view.registered
    copy.in_use = view.in_use
    copy.lookup, copy._absent, copy._looked_up = view.lookup, view._absent, view._looked_up
    copy._by_id = {**view._by_id, vm.id: vm}
    copy.position = view.position
    copy.version = view.version
    copy.born = view.born
    return copy
