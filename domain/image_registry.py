"""Cross-VM facts about one image file, as its own aggregate.

Each VM that starts using an image, and each operation that will write or delete it, appends an
event here in the same atomic save as the VM's own events. Two writers that both saw version n
of this stream cannot both save version n+1: eventsourcing's optimistic concurrency makes one of
them fail, so "an image used by two VMs is read-only" and "an image is not deleted while another
VM starts using it" hold across processes and hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import ConcurrentUpdate
from .vm import LEDGER_NAMESPACE


def image_id(path: str, host: str = "") -> UUID:
    """An image is its path on storage every host sees (`host` empty), and (host, path) on a
    host's own storage. A registration made before hosts has the path's id, whatever its host."""
    return uuid5(LEDGER_NAMESPACE, f"image:{path}" if not host else f"image:{host}:{path}")


class ImageRegistration(Aggregate):
    # The host whose own file this is; "" for an image on shared storage (one for every host).
    # A `FirstUsed` stored before hosts gets the host its chain record names when it is read.
    host: str = ""

    @staticmethod
    def create_id(path: str, host: str = "", **_: Any) -> UUID:
        return image_id(path, host)

    @event("FirstUsed")
    def __init__(self, path: str, vm: str, host: str = "") -> None:
        self.path = path
        self.host = host
        self.users: set[str] = {vm}
        # VMs that used it and let it go (deleted, released, retired): every path a VM ever
        # used is one of these registrations, so "ever used" needs no set that grows on the VM
        self.former_users: set[str] = set()
        self.reserved_by: tuple[str, str] | None = None  # (vm, operation id)

    @property
    def live(self) -> bool:
        """Used by some VM, or held by an operation: the registration matters to what a command
        decides now (the others only say a path was used once)."""
        return bool(self.users) or self.reserved_by is not None

    def add_user(self, vm: str) -> None:
        if self.reserved_by is not None and self.reserved_by[0] != vm:
            raise ConcurrentUpdate(
                f"{self.path} is being changed by an operation of VM {self.reserved_by[0]!r}"
            )
        if vm not in self.users:
            self._use_added(vm=vm)

    @event("UseAdded")
    def _use_added(self, vm: str) -> None:
        self.users.add(vm)

    def end_use(self, vm: str, deleted: bool) -> None:
        if vm in self.users or self.reserved_by is not None:
            self._use_ended(vm=vm, deleted=deleted)

    @event("UseEnded")
    def _use_ended(self, vm: str, deleted: bool) -> None:
        if vm in self.users:
            self.users.discard(vm)
            self.former_users.add(vm)
        if self.reserved_by is not None and self.reserved_by[0] == vm:
            self.reserved_by = None

    def reserve_change(self, vm: str, op_id: str) -> None:
        """The operation `op_id` of `vm` will write or delete this file."""
        if self.users - {vm}:
            raise ConcurrentUpdate(
                f"{self.path} is also used by {', '.join(sorted(self.users - {vm}))}; "
                "it became read-only after this plan was made"
            )
        if self.reserved_by is not None and self.reserved_by != (vm, op_id):
            raise ConcurrentUpdate(f"{self.path} is reserved by operation {self.reserved_by[1]}")
        if self.reserved_by is None:
            self._change_reserved(vm=vm, op_id=op_id)

    @event("ChangeReserved")
    def _change_reserved(self, vm: str, op_id: str) -> None:
        self.reserved_by = (vm, op_id)

    def finish_change(self, vm: str, op_id: str) -> None:
        if self.reserved_by == (vm, op_id):
            self._change_finished(vm=vm, op_id=op_id)

    @event("ChangeFinished")
    def _change_finished(self, vm: str, op_id: str) -> None:
        self.reserved_by = None


def release_registrations(
    lookup: Callable[[str], ImageRegistration | None],
    vm: str,
    op_id: str,
    touched: Iterable[str],
    gone: Mapping[str, bool],
) -> list[ImageRegistration]:
    """Closing an operation: each file it touched is freed of its reservation, and each file
    it let go (`gone`: path -> deleted) loses `vm` as a user. `lookup` loads a registration."""
    out = []
    for path in sorted(set(touched) | set(gone)):
        registration = lookup(path)
        if registration is None:
            continue
        if path in gone:
            registration.end_use(vm, deleted=gone[path])
        else:
            registration.finish_change(vm, op_id)
        out.append(registration)
    return out
