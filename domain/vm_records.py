"""What a VirtualMachine holds besides its images' records: its snapshots and its operation in
progress, as immutable records, and the id of its stream. The aggregate (vm.py) replaces a
record when it changes, never changes one in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from .images import ImageFacts, ImageRecord, Origin
from .steps import Step

LEDGER_NAMESPACE = uuid5(NAMESPACE_URL, "https://snapledger.invalid/")


def vm_id(name: str, generation: int = 1) -> UUID:
    """A VM's stream: a name adopted again after `retire` is a new VM with a history of its own."""
    suffix = "" if generation == 1 else f"#{generation}"
    return uuid5(LEDGER_NAMESPACE, f"vm:{name}{suffix}")


@dataclass(frozen=True)
class SnapshotRecord:
    name: str
    parent: str | None
    disks: dict[str, str]  # target -> frozen image
    created: str
    domain_xml: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class OperationRecord:
    """An operation whose intent is recorded; `done` steps are finished on disk."""

    op_id: str
    kind: str
    target: str | None  # the snapshot it is about, if any
    steps: tuple[Step, ...]
    done: int  # steps finished on disk, in order
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def started_destruction(self) -> bool:
        return any(s.destructive for s in self.steps[: self.done])

    def pivot_requested(self, index: int, disk: str) -> str | None:
        """The base snapledger asked libvirt to pivot `disk` onto during step `index`, if any."""
        pivots = self.details.get("pivots", {})
        asked = pivots.get(str(index), {}) if isinstance(pivots, dict) else {}
        base = asked.get(disk) if isinstance(asked, dict) else None
        return str(base) if base is not None else None

    def pivot_vouched(self, index: int) -> bool:
        """The operator vouched that step `index`'s pivot happened (recover --pivoted)."""
        return index in self.details.get("pivots_vouched", [])

    @property
    def runner(self) -> dict[str, Any] | None:
        """The process carrying it out, as recorded when it started or was resumed."""
        runner = self.details.get("runner")
        return dict(runner) if isinstance(runner, dict) else None


def record_from_dict(item: dict[str, Any]) -> ImageRecord:
    values = dict(item)
    origin = Origin(values.pop("origin"))
    detached = bool(values.pop("detached", False))
    missing = bool(values.pop("missing", False))
    return ImageRecord(ImageFacts.from_dict(values), origin, detached, missing)


def image_record_to_dict(record: ImageRecord) -> dict[str, Any]:
    return {
        **record.facts.to_dict(), "origin": record.origin.value, "detached": record.detached,
        "missing": record.missing,
    }
