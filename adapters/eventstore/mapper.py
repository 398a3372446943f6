"""Reading events recorded before a fact carried its host.

A VM's home host became part of its `Adopted` event with the many-hosts rules (semantics.md),
and the host whose own file an image is part of its registration's `FirstUsed`. An event stored
before that has no such field; the host that recorded it is still known, from
the event's chain record (chain.py), which is written in the same transaction as the event and
is covered by the same hash chain. When such an event is read, it is given that host as the
fact it would have carried: every reader (a VM loaded, the ledger folded, a checkpoint built)
sees the same VM, and nothing stored changes (the chain still commits to the stored bytes).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent

# topic -> the field an event of that topic carries its host in, since the host was recorded
HOST_FIELDS = {
    "snapledger.domain.vm:VirtualMachine.Adopted": "home",
    "snapledger.domain.image_registry:ImageRegistration.FirstUsed": "host",
}

RecordedHost = Callable[[UUID, int], "str | None"]  # (originator id, version) -> the chain's host


class RecordedHostMapper(Mapper[UUID]):
    """eventsourcing's mapper, giving an event stored without its host field the host its chain
    record names (`recorded_host`, set by the application once its recorder exists)."""

    recorded_host: RecordedHost | None = None

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        event = super().to_domain_event(stored_event)
        field = HOST_FIELDS.get(stored_event.topic)
        if field is not None and field not in event.__dict__ and self.recorded_host is not None:
            originator = stored_event.originator_id
            key = originator if isinstance(originator, UUID) else UUID(str(originator))
            event.__dict__[field] = self.recorded_host(key, stored_event.originator_version) or ""
        return event


def weakly_bound(method: Callable[[UUID, int], str | None]) -> RecordedHost:
    """`method` (bound to an object) called through a weak reference to that object: None once
    the object is gone."""
    ref = weakref.WeakMethod(method)

    def call(originator_id: UUID, version: int) -> str | None:
        bound = ref()
        return bound(originator_id, version) if bound is not None else None

    return call
