"""The service layer's ports: what it needs of the world, as Protocols.

The service (commands.py, operation.py) is written against these alone; the rooms beside it
implement them (storage/: qemu-img and the simulation; libvirt/: the hypervisor; eventstore/ and
checkpoint/: the ledger and its projection; host/: the runners) and compose.py plugs them in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from snapledger.domain.images import ImageFacts

if TYPE_CHECKING:
    from snapledger.domain.steps import Plan, Step
    from snapledger.domain.vm import OperationRecord, VirtualMachine
    from snapledger.projections.view import LedgerView

Clock = Callable[[], str]  # the time an event records, ISO 8601
Runner = dict[str, object]  # host, boot id, pid, start time: recorded with an operation


@dataclass(frozen=True)
class Sharing:
    """Who else has a file, as the disk shows it now (never recorded: the world changes)."""

    links: int  # hard links to the file (st_nlink); more than 1: another name shares it
    writer: str | None  # who holds it open for writing (QEMU's write lock), if anyone
    reader: str | None  # who holds it open at all (QEMU's read or write lock), if anyone


class Dependants(Protocol):
    """Image files found in some directories, with the files their headers name as backing."""

    def dependants(self, image: str, known: Collection[str]) -> list[str]:
        """Every file found whose backing chain reaches `image` through files that are not in
        `known` (the images a ledger holds): nearest first. Compared by resolved path."""

    def dependants_of(self, images: Iterable[str], known: Collection[str]) -> Mapping[str, list[str]]:
        """`dependants` of each image, with `known` resolved once (a VM of 10,000 images asked
        one by one resolved it 10,000 times), each worked out when first read (OnDemand):
        a planner reads the few images it touches."""


class OnDemand(Mapping[str, list[str]]):
    """Image -> its dependants, each worked out by `one` when first read, then kept. Only the
    `images` given are keys; reading them all (iterating) works every one out."""

    def __init__(self, images: Iterable[str], one: Callable[[str], list[str]]) -> None:
        # kept as given when it can answer `in` (a VM's images: its dict's keys), not copied
        self._wanted: Collection[str] = images if isinstance(images, Collection) else set(images)
        self._one = one
        self._found: dict[str, list[str]] = {}

    def __getitem__(self, image: str) -> list[str]:
        if image not in self._wanted:
            raise KeyError(image)
        found = self._found.get(image)
        if found is None:
            found = self._found[image] = self._one(image)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._wanted)))

    def __len__(self) -> int:
        return len(set(self._wanted))


class StoragePort(Protocol):
    """Failures raise StorageError; a step that could not start because another process holds
    a lock on an image (a running VM, a qemu-img still running) raises ImageInUse and has done
    nothing. A tool the adapter needs that is missing raises ToolMissing.

    Formats are never guessed: `fmt` is the format the ledger recorded for the image; every
    backing file is opened with the format its overlay records. Only `inspect` and
    `inspect_chain` of a file the ledger does not know yet take `fmt=None` (probed)."""

    def exists(self, path: str) -> bool: ...

    def check_tools(self) -> None:
        """Raise ToolMissing if a tool the storage steps need can't be run: checked before an
        operation is recorded (reading plain qcow2 files needs none, so a dry run works)."""

    def resolve(self, path: str) -> str:
        """`path` with every symlink resolved (realpath); the file need not exist."""

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        """Facts about one file (its backing is named, never opened); StorageError if it is
        missing or unreadable."""

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        """`path` first, then every backing file down to the bottom image. With `within`, each
        file, `path` included, must resolve inside one of these directories (or below one):
        the first that does not raises OutsideAllowedDirs before it is opened. An overlay that
        does not record its backing file's format is refused (StorageError)."""

    def create_overlay(
        self, path: str, backing: str, backing_format: str, virtual_size: int
    ) -> None:
        """Create `path` exclusively; StorageError if it exists."""

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        """Write `top`'s (format `fmt`) allocated data into its backing file `base`."""

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        """Copy into `image` the data it reads above `new_backing`, then back it by `new_backing`."""

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None: ...

    def delete(self, path: str) -> None: ...

    def remove_unfinished(self, path: str) -> bool:
        """Remove `path` if it is what a create cut short leaves: a small file that holds no
        data (empty, a header only part written, or an image that maps nothing). True if it
        was removed; a file that may hold anyone's data is never removed."""

    def repair(self, path: str, *, fmt: str) -> None:
        """After a merge that wrote `path` was cut short (a killed qemu-img never wrote back its
        cached metadata): make the image's own metadata whole again, keeping what it maps."""

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        """Whether `image` reads, through the backing its header names now, exactly what it would
        read over `backing`. A pull cut short can leave the header naming the new backing before
        the data it needs is all in (QEMU writes the header before its cached metadata)."""

    def sharing(self, path: str) -> Sharing:
        """Hard links and another process's write lock on `path`, looked at without taking a
        lock that would disturb a running writer; StorageError if it can't be looked at."""

    def scan(self, directories: Iterable[str]) -> Dependants:
        """Every image file in `directories` (recursively, symlinked directories followed) with
        the backing file its header names, read in-process: a way to find the files the ledger
        does not know that rest on its images."""


class MergeListener(Protocol):
    """Told how a long merge goes (qemu-img commit or rebase, a libvirt block job), by the storage
    adapter running it; the command line shows it (adapters/cli/output.py's MergeProgress)."""

    def started(self, step: str, source: str, target: str, total_bytes: int) -> None:
        """A merge begins: `step` ("commit" or "pull") moves data of `source` into `target`,
        which it writes; about `total_bytes` (0: not known)."""

    def advanced(self, fraction: float) -> None:
        """The fraction of the merge done, 0 to 1."""

    def finished(self) -> None:
        """The merge ended, done or not."""


# ---- the ledger ------------------------------------------------------------------------------


class LedgerStore(Protocol):
    """The event store, as the service uses it. Its own failures (a damaged, locked, full or
    gone store) are the exceptions in `errors`: the tool's own trouble, never drift."""

    errors: tuple[type[BaseException], ...]

    def load(self, aggregate_id: UUID) -> Any | None:
        """The aggregate with every event applied, or None if nothing was ever recorded of it."""

    def record(self, *aggregates: Any) -> None:
        """Save the aggregates' new events in one transaction; ConcurrentUpdate if another
        writer recorded on one of them first (nothing is saved then)."""

    def describe(self, error: BaseException) -> str:
        """One line saying what a store failure (one of `errors`) means for this ledger."""

    def last_position(self) -> int: ...

    def events_after(self, position: int, stop: int | None = None) -> Iterator[tuple[Any, int]]:
        """Every event after `position` (up to `stop`), in ledger order, with its position."""

    def position_at(self, when: datetime) -> int:
        """The position of the last event whose time is at or before `when` (0 if none)."""

    def newest_first(self, aggregate_id: UUID) -> Iterator[Any]:
        """One aggregate's events, newest first."""

    def recorded_position(self, originator_id: UUID, version: int = 1) -> int | None:
        """The ledger position of one aggregate's event (None: no such event)."""

    def close(self) -> None:
        """Let go of the store's connections."""

    def begin_operation(self) -> str:
        """Record what follows under a new operation id (returned)."""

    @property
    def operation(self) -> str | None:
        """The operation being recorded (None: none begun)."""

    def continue_operation(self, operation: str | None) -> None:
        """Record under `operation` again."""

    def operation_position(self, operation: str) -> int | None:
        """The last position this process saved for `operation` (None: it saved nothing)."""


class ViewProjection(Protocol):
    """The LedgerView kept up to date, with checkpoints (checkpoint/persisted.py)."""

    def present(self) -> LedgerView:
        """The ledger now; it may hold only the live registrations and look the others up."""

    def catch_up(self, view: LedgerView) -> LedgerView: ...

    def save(self, view: LedgerView) -> str: ...

    def view_at(self, position: int) -> LedgerView: ...

    def view_of_one(self, name: str) -> LedgerView | None:
        """What `show NAME` needs, from the VM's own events, when no checkpoint is near the
        ledger's end (None: catching up is cheaper)."""

    def close(self) -> None:
        """Let go of the connections it holds of its own."""


# ---- who runs an operation -----------------------------------------------------------------


class Runners(Protocol):
    """Which process carries out an operation, and whether it still runs (host/processes.py)."""

    def this_process(self) -> Runner: ...

    def running(self, runner: Runner | None, op_id: str) -> bool | None:
        """True: it still runs; False: it is gone; None: it ran on another host (can't tell)."""

    def carrying_out(self, op_id: str) -> AbstractContextManager[None]:
        """While inside, this process is the one carrying out `op_id`."""

    def files_open_here(self) -> set[tuple[int, int]]:
        """(device, inode) of every file this process has open (the ledger's own files)."""


# ---- the hypervisor ------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSnapshot:
    """One snapshot from the hypervisor's own metadata (libvirt's), as `adopt --libvirt` finds it."""

    name: str
    parent: str | None
    description: str | None
    created: int | None  # seconds since the epoch
    state: str | None
    memory: str | None  # <memory snapshot='...'>: 'no' for disk-only
    disks: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # target -> (mode, overlay)
    domain: str | None = None  # the <domain> it recorded, as text
    domain_sources: dict[str, str] = field(default_factory=dict)  # target -> source in <domain>


@dataclass(frozen=True)
class FoundDomain:
    """A domain as the hypervisor defines it, before it is adopted."""

    definition: str  # its persistent definition
    tracked: dict[str, str]  # target -> path: its file-backed qcow2 disks
    left_alone: list[str]  # why each other disk is not tracked
    snapshots: list[DomainSnapshot]


class LiveStorage(StoragePort, Protocol):
    """Storage of a VM whose domain may run: images it has open are changed by block jobs."""

    def await_job(self, step: Step) -> None:
        """Before a step is carried out again: wait for the block job a crash left running."""


class Hypervisor(Protocol):
    """What the service asks of the hypervisor for a VM adopted from it (libvirt/hypervisor.py).
    A domain that went away raises DomainGone; a step a running domain can't do raises
    LiveStepImpossible."""

    on_pivot: Callable[[str, str], None] | None  # called (disk, base) right before a pivot

    def domain_xml(self, vm: VirtualMachine) -> str: ...

    def current_definition(self, vm: VirtualMachine) -> str: ...

    def runtime(self, vm: VirtualMachine) -> dict[str, object]: ...

    def findings(self, vm: VirtualMachine, ignore: str | None = None) -> list[str]: ...

    def stale_definition(self, vm: VirtualMachine) -> tuple[str, list[str]] | None: ...

    def redefine(self, vm: VirtualMachine, xml: str) -> None: ...

    def check_live(self, vm: VirtualMachine, plan: Plan) -> None: ...

    def shape(self, vm: VirtualMachine, plan: Plan, target: str | None, start: bool = False) -> Plan: ...

    def check_resumable(self, vm: VirtualMachine, op: OperationRecord) -> None: ...

    def after(self, vm: VirtualMachine, plan: Plan, target: str | None) -> list[str]: ...

    def after_recover(self, vm: VirtualMachine, op: OperationRecord) -> list[str]: ...

    def storage(self, vm: VirtualMachine, inner: StoragePort) -> LiveStorage: ...

    def carry_out(self, vm: VirtualMachine, step: Step) -> None: ...

    def swap(self, vm: VirtualMachine, disk: str, path: str) -> str | None: ...

    def restore_definition(self, vm: VirtualMachine, xml: str) -> None: ...

    def found_domain(self, uri: str, name: str) -> FoundDomain:
        """Domain `name` on connection `uri`, for `adopt --libvirt`; DomainGone if there is none."""

    def forget_snapshot(self, uri: str, name: str, snapshot: str) -> None:
        """Remove the hypervisor's own metadata of one snapshot (its disks are left alone)."""
