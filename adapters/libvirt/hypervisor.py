"""LibvirtHypervisor: what the service asks of libvirt for its VMs that are libvirt domains.

The facade over the libvirt room, one connection (LibvirtPort) per URI; each concern is its own
module:

- shaping.py: the hypervisor's steps added to a plan before it is recorded (pure).
- domain_steps.py: carrying those steps out (SwitchDisks, StopDomain, DefineDomain, StartDomain).
- storage.py: `storage(vm, inner)`, the storage port for one operation: an image in the backing
  chain of a running domain's disk is merged by a libvirt block job (block_jobs.py), every other
  image by `inner` (qemu-img); running.py says which images running QEMUs have open.
- definitions.py: `findings` (libvirt's definitions against the ledger: drift), the definition
  every operation records (`current_definition`), `reconcile`'s stale definitions.
- here: `check_resumable` and `after_recover` around `recover`, `after` a finished operation,
  `swap` for swap-disk, and the test knobs read from the environment.

`adopt --libvirt` is adapters/service/adopt_libvirt.py (re-exported here, with DEFAULT_URI).

This module imports no libvirt: `connect` (adapters/libvirt/domains.py, by default; a fake in the
unit tests) does, and only when a VM bound to libvirt is acted on.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from snapledger.adapters.host import extras
from snapledger.adapters.libvirt import definitions
from snapledger.adapters.libvirt.block_jobs import COMMIT_KINDS, refuse_foreign_jobs
from snapledger.adapters.libvirt.domain_steps import carry_out
from snapledger.adapters.libvirt.errors import (
    DomainStopped,
    ForeignBlockJob,
    WrongImage,
)
from snapledger.adapters.libvirt.port import LibvirtFailure, LibvirtPort, NoSuchDomain
from snapledger.adapters.libvirt.running import LiveDisk, live_disks, port_running
from snapledger.adapters.libvirt.shaping import check_live_pulls, shape_plan
from snapledger.adapters.libvirt.storage import LibvirtStorage
from snapledger.adapters.libvirt.xml import (
    disk_sources,
    domain_disks,
    domain_root,
    parse_snapshot,
    with_sources,
)
from snapledger.adapters.service.ports import FoundDomain, StoragePort
from snapledger.domain.errors import BadInput
from snapledger.domain.steps import (
    Commit,
    OperationKind,
    Plan,
    Pull,
    SetActive,
    StartDomain,
    Step,
    SwitchDisks,
)
from snapledger.domain.vm import OperationRecord, VirtualMachine

# A test knob, never set in normal use: a bandwidth limit (bytes per second) for every block job
# snapledger starts, so that the system tests can interrupt a live merge reliably
# (tests/system/test_libvirt_restart.py). Unset, empty or 0: no limit.
TEST_JOB_BANDWIDTH_ENV = "SNAPLEDGER_TEST_JOB_BANDWIDTH"
# A test knob too: seconds to wait right after a pivot of ours, before the step is recorded done,
# so that a test can kill snapledger exactly there. Unset, empty or 0: no wait.
TEST_PAUSE_AFTER_PIVOT_ENV = "SNAPLEDGER_TEST_PAUSE_AFTER_PIVOT"


from snapledger.adapters.libvirt import DEFAULT_URI as DEFAULT_URI  # noqa: E402 (defined with the package)


def job_bandwidth_from_env(environ: Mapping[str, str]) -> int:
    """The block jobs' bandwidth limit the test knob asks for (bytes per second), or 0."""
    value = environ.get(TEST_JOB_BANDWIDTH_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise BadInput(f"{TEST_JOB_BANDWIDTH_ENV} must be a number of bytes per second, not {value!r}")
    return int(value)


def pause_after_pivot_from_env(environ: Mapping[str, str]) -> float:
    value = environ.get(TEST_PAUSE_AFTER_PIVOT_ENV, "").strip()
    try:
        return float(value) if value else 0.0
    except ValueError:
        raise BadInput(f"{TEST_PAUSE_AFTER_PIVOT_ENV} must be a number of seconds, not {value!r}") from None


def real_connect(uri: str) -> LibvirtPort:
    """A connection through libvirt-python, imported here, on first use (the one import of this
    room not at the top: libvirt-python is optional)."""
    extras.require(extras.LIBVIRT)  # without libvirt-python: one line naming the pip install
    from snapledger.adapters.libvirt.domains import LibvirtDomains

    return LibvirtDomains(uri)


# A URI's host part naming this machine (or none: the local daemon).
LOCAL_NAMES = frozenset({"", "localhost", "127.0.0.1", "::1"})


def refuse_remote(uri: str) -> None:
    """A connection URI that names another machine is refused (exit 2): the domain's disks are
    that machine's, and qemu-img, the dependants' scan and every drift check run here, on this
    host's files. Run snapledger on that host instead (docs/multi-host.md)."""
    try:
        machine = urlsplit(uri).hostname or ""
    except ValueError:
        raise BadInput(f"libvirt URI {uri!r} can't be read") from None
    if machine.lower() not in LOCAL_NAMES | {socket.gethostname().lower()}:
        raise BadInput(
            f"libvirt URI {uri!r} names another machine ({machine}); its disks can't be seen "
            "from here, where qemu-img runs: run snapledger on that host"
        )


class LibvirtHypervisor:
    """The service's hypervisor for VMs bound to libvirt (see the module's docstring)."""

    def __init__(
        self,
        connect: Callable[[str], LibvirtPort] = real_connect,
        *,
        poll_seconds: float = 0.25,
        job_timeout: float = 6 * 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        job_bandwidth: int = 0,
        pause_after_pivot: float = 0.0,
    ) -> None:
        self.connect = connect
        self.poll_seconds = poll_seconds
        self.job_timeout = job_timeout
        self.sleep = sleep
        # bytes per second for every block job started; 0 (the default) is no limit. Only the
        # tests set it (TEST_JOB_BANDWIDTH_ENV), to make a live merge slow enough to interrupt.
        self.job_bandwidth = job_bandwidth
        self.pause_after_pivot = pause_after_pivot  # a test knob (TEST_PAUSE_AFTER_PIVOT_ENV)
        # Called with (disk, base) right before a pivot of ours: the service records the fact
        # (PivotRequested) first, so that `recover` can tell our pivot from a hand-made start.
        self.on_pivot: Callable[[str, str], None] | None = None
        self._ports: dict[str, LibvirtPort] = {}
        # why a StartDomain step's domain did not start, by domain: reported by `after`
        self._start_failures: dict[str, str] = {}

    # ---- binding ---------------------------------------------------------------------

    def port_for(self, uri: str) -> LibvirtPort:
        if uri not in self._ports:
            refuse_remote(uri)
            self._ports[uri] = self.connect(uri)
        return self._ports[uri]

    def port(self, vm: VirtualMachine) -> tuple[LibvirtPort, str]:
        assert vm.libvirt is not None
        return self.port_for(vm.libvirt["uri"]), vm.libvirt["domain"]

    def live_sources(self, vm: VirtualMachine) -> dict[str, str]:
        """libvirt's disk sources now: the running definition if the domain runs, else the
        persistent one."""
        port, domain = self.port(vm)
        running = port.is_running(domain)
        return disk_sources(port.xml(domain, inactive=not running))

    def domain_id(self, vm: VirtualMachine) -> int | None:
        """The running domain's libvirt id (a new one at every start), or None."""
        port, domain = self.port(vm)
        try:
            if not port.is_running(domain):
                return None
            found = domain_root(port.xml(domain)).get("id")
        except NoSuchDomain:
            return None
        return int(found) if found is not None and found.lstrip("-").isdigit() else None

    def runtime(self, vm: VirtualMachine) -> dict[str, object]:
        """What an operation records about the domain when it begins: whether it runs, and in
        which QEMU (its id), so that `recover` can tell a restart from a pivot."""
        found = self.domain_id(vm)
        return {"domain_running": found is not None, "domain_id": found}

    def current_definition(self, vm: VirtualMachine) -> str:
        """The definition to record around an operation (adapters/libvirt/definitions.py)."""
        return definitions.current_definition(*self.port(vm), vm)

    # ---- the service's questions -----------------------------------------------------

    def findings(self, vm: VirtualMachine, ignore: str | None = None) -> list[str]:
        """Where libvirt's definitions differ from the ledger: drift (adapters/libvirt/definitions.py)."""
        return definitions.findings(*self.port(vm), vm, ignore)

    def stale_definition(self, vm: VirtualMachine) -> tuple[str, list[str]] | None:
        """What `reconcile` redefines a stale persistent definition with, and what it names."""
        return definitions.stale_definition(*self.port(vm), vm)

    def redefine(self, vm: VirtualMachine, xml: str) -> None:
        port, _ = self.port(vm)
        port.define(xml)

    def domain_xml(self, vm: VirtualMachine) -> str:
        """The definition now (persistent if the domain has one), as a snapshot records it."""
        port, domain = self.port(vm)
        return port.xml(domain, inactive=True)

    def check_live(self, vm: VirtualMachine, plan: Plan) -> None:
        """Raise LiveStepImpossible if the domain runs and `plan` has a step libvirt can't do
        live (a pull into a backing file of a running disk)."""
        port, domain = self.port(vm)
        if port.is_running(domain):
            self._check_live(vm, list(plan.steps))

    def shape(
        self, vm: VirtualMachine, plan: Plan, target: str | None = None, start: bool = False
    ) -> Plan:
        """`plan` with the hypervisor's steps added (adapters/libvirt/shaping.py), after a
        running domain is checked for block jobs not ours and pulls libvirt can't do live."""
        port, domain = self.port(vm)
        running = port.is_running(domain)
        persistent = port.is_persistent(domain)
        if running:
            # nothing is recorded yet, so any job on a tracked disk is someone else's
            refuse_foreign_jobs(port, domain, vm.disks, frozenset(), "nothing was done; try again")
            self._check_live(vm, list(plan.steps))
        return shape_plan(
            vm, plan, domain, running=running, persistent=persistent,
            definition=lambda: port.xml(domain, inactive=True), target=target, start=start,
        )

    def check_resumable(self, vm: VirtualMachine, op: OperationRecord) -> None:
        """Before `recover` takes `op` over: a running domain's disks are on images the
        operation can have left them on (the ledger's active image, or one a step still to do
        moves it to). Anything else is a domain started on the wrong image: WrongImage (exit 3),
        nothing recorded. Which of those a live commit accepts is decided at its step."""
        port, domain = self.port(vm)
        try:
            if not port.is_running(domain):
                return
            live = disk_sources(port.xml(domain))
        except NoSuchDomain:
            return
        step = op.steps[op.done] if op.done < len(op.steps) else None
        ours = frozenset(COMMIT_KINDS if isinstance(step, Commit) else (
            {"pull"} if isinstance(step, Pull) else set()))
        refuse_foreign_jobs(  # a job that could not be the open step's own
            port, domain, vm.disks, ours,
            f"the {op.kind} operation {op.op_id} stays open: run 'snapledger recover' after",
        )
        for disk, active in sorted(vm.disks.items()):
            plausible = {active}
            for step in op.steps[op.done:]:
                if isinstance(step, SwitchDisks):
                    plausible |= {p for d, p in step.disks if d == disk}
                elif isinstance(step, SetActive) and step.disk == disk:
                    plausible.add(step.path)
            seen = live.get(disk)
            if seen not in plausible:
                raise WrongImage(
                    f"domain {domain!r} runs {disk} on {seen or 'no file'}, but the {op.kind} "
                    f"operation {op.op_id} expects {active} at this step; nothing was done: shut "
                    f"the domain down, start it on {active} "
                    f"({definitions.definition_hint(vm, {disk: active})}), then run 'snapledger "
                    "recover'"
                )

    def after_recover(self, vm: VirtualMachine, op: OperationRecord) -> list[str]:
        """After `recover` finished `op`: a domain that ran when the operation began and has
        stopped since is started again on the images the ledger now says, when libvirt can
        (persistent); a transient one that is gone is named with where its definition is."""
        if not op.details.get("domain_running") or op.kind == OperationKind.REVERT:
            return []  # a revert stops the domain itself, and starts it again if asked
        port, domain = self.port(vm)
        where = ", ".join(f"{d}={p}" for d, p in sorted(vm.disks.items()))
        try:
            if port.is_running(domain):
                return []
            persistent = port.is_persistent(domain)
        except NoSuchDomain:
            persistent = False
        if not persistent:
            return [
                f"domain {domain} ran when the {op.kind} began and is gone (transient, or "
                f"undefined and stopped): start it again with the definition 'snapledger show "
                f"{vm.name} --json' gives (domain_xml, on {where})"
            ]
        try:
            port.start(domain)
        except LibvirtFailure as error:
            return [f"domain {domain} ran when the {op.kind} began; starting it again failed: {error}"]
        return [f"domain {domain} ran when the {op.kind} began: started again on {where}"]

    def _check_live(self, vm: VirtualMachine, steps: list[Step]) -> None:
        check_live_pulls(self.live_disks(vm), steps)

    def storage(self, vm: VirtualMachine, inner: StoragePort) -> LibvirtStorage:
        return LibvirtStorage(inner, self, vm)

    def carry_out(self, vm: VirtualMachine, step: Step) -> None:
        """A hypervisor step, or see from libvirt that it was done before a crash
        (adapters/libvirt/domain_steps.py). Why a StartDomain's domain did not start is kept
        for `after`: it does not fail the operation."""
        port, _ = self.port(vm)
        if isinstance(step, StartDomain):
            self._start_failures.pop(step.domain, None)
        failure = carry_out(port, vm, step)
        if isinstance(step, StartDomain) and failure is not None:
            self._start_failures[step.domain] = failure

    def after(self, vm: VirtualMachine, plan: Plan, target: str | None) -> list[str]:
        """What follows a finished operation (also one finished by `recover`): forget libvirt's
        metadata of a snapshot snapledger deleted; say whether a domain the operation started
        runs. Returns notes for the user."""
        port, domain = self.port(vm)
        notes = []
        if plan.kind == OperationKind.DELETE and target is not None:
            if target in self.metadata_names(port, domain):
                port.delete_snapshot_metadata(domain, target)
                notes.append(f"libvirt's metadata of snapshot {target} was removed too")
        if any(isinstance(step, StartDomain) for step in plan.steps):
            failure = self._start_failures.pop(domain, None)
            if failure is not None or not port_running(port, domain):
                raise LibvirtFailure(
                    f"the {plan.kind} is done and recorded, but domain {domain} did not start: "
                    f"{failure or 'it is not running'}"
                )
            notes.append(f"domain {domain} is running")
        return notes

    @staticmethod
    def metadata_names(port: LibvirtPort, domain: str) -> set[str]:
        try:
            return {parse_snapshot(x).name for x in port.snapshot_xmls(domain)}
        except NoSuchDomain:
            return set()

    def swap(self, vm: VirtualMachine, disk: str, path: str) -> str | None:
        """swap-disk on a libvirt VM: libvirt already uses `path` (changed with virsh), or the
        shut-off domain is redefined with it. A running domain's disk can't be swapped here.
        Returns the persistent definition it replaced (None if it defined nothing)."""
        port, domain = self.port(vm)
        running = port.is_running(domain)
        xml = port.xml(domain, inactive=not running)
        if disk_sources(xml).get(disk) == path:
            if running and port.is_persistent(domain):
                inactive = port.xml(domain, inactive=True)
                if disk_sources(inactive).get(disk) != path:
                    port.define(with_sources(inactive, {disk: path}))
                    return inactive
            return None
        if running:
            raise BadInput(
                f"domain {domain!r} is running on {disk_sources(xml).get(disk)}: swap its disk with "
                f"virsh (blockcopy --pivot) or shut it down first, then record it with swap-disk"
            )
        inactive = port.xml(domain, inactive=True)
        port.define(with_sources(inactive, {disk: path}))
        return inactive

    def restore_definition(self, vm: VirtualMachine, xml: str) -> None:
        """Put back a persistent definition `swap` replaced (its change was not recorded)."""
        port, _ = self.port(vm)
        port.define(xml)

    # ---- running chains --------------------------------------------------------------

    def live_disks(self, vm: VirtualMachine) -> list[LiveDisk]:
        """The chain of every file-backed disk of every running domain on the VM's connection."""
        port, _ = self.port(vm)
        return live_disks(port)

    # ---- adopt --libvirt ------------------------------------------------------------------

    def found_domain(self, uri: str, name: str) -> FoundDomain:
        port = self.port_for(uri)
        running = port.is_running(name)
        live_xml = port.xml(name, inactive=not running)
        definition = port.xml(name, inactive=True)
        tracked: dict[str, str] = {}
        left_alone: list[str] = []
        for disk in domain_disks(live_xml):
            reason = disk.left_alone_reason()
            if reason is None:
                assert disk.source is not None
                tracked[disk.target] = disk.source
            else:
                left_alone.append(reason)
        snapshots = [parse_snapshot(x) for x in port.snapshot_xmls(name)] if tracked else []
        return FoundDomain(definition, tracked, left_alone, snapshots)

    def forget_snapshot(self, uri: str, name: str, snapshot: str) -> None:
        self.port_for(uri).delete_snapshot_metadata(name, snapshot)


__all__ = [
    "DEFAULT_URI",
    "TEST_JOB_BANDWIDTH_ENV",
    "TEST_PAUSE_AFTER_PIVOT_ENV",
    "DomainStopped",
    "ForeignBlockJob",
    "LibvirtHypervisor",
    "LibvirtStorage",
    "WrongImage",
    "job_bandwidth_from_env",
    "pause_after_pivot_from_env",
]
