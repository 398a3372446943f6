"""The composition root: the one place that picks the store, the storage adapter and the
recording context (who, where, why) chained with every event."""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any, cast

from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.probe import ABSENT, LEDGER, check_directory, probe_sqlite
from snapledger.adapters.eventstore.store_url import (
    POSTGRES,
    SQLITE,
    chosen_store_url,
    parse_store_url,
)
from snapledger.adapters.host import extras
from snapledger.adapters.host.clock import utc_now
from snapledger.adapters.host.processes import LocalProcesses
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.ports import (
    Clock,
    Hypervisor,
    MergeListener,
    Runners,
    StoragePort,
    ViewProjection,
)
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.adapters.version import VERSION
from snapledger.domain.errors import BadName
from snapledger.domain.ledger_hash import UNKNOWN_HOST, RecordedBy
from snapledger.domain.names import check_host
from snapledger.projections.cost import CostModel


def tool_version() -> str:
    return VERSION


def this_host(host: str | None = None) -> str:
    """`--host`, else SNAPLEDGER_HOST, else the machine's hostname (semantics.md, "Many hosts");
    BadName (exit 2) if that is no host name."""
    if host == "":  # said, and empty: not "the hostname, then"
        raise BadName("--host needs a host name; leave it out to use this machine's hostname")
    return check_host(host or os.environ.get("SNAPLEDGER_HOST") or socket.gethostname())


def recording_context(
    actor: str | None = None, reason: str | None = None, host: str | None = None
) -> RecordedBy:
    """`--actor`, else SNAPLEDGER_ACTOR, else the login name; this host; this version."""
    who = actor or os.environ.get("SNAPLEDGER_ACTOR")
    if not who:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid (containers)
            who = f"uid:{os.getuid()}"
    return RecordedBy(who, this_host(host), tool_version(), reason or None)


def open_store(
    url: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
    reading: bool = False,
    host: str | None = None,
) -> LedgerApplication:
    """The event store alone (verify reads raw rows before anything folds them).

    `reading`: the command only reads. A store that isn't there yet is then an empty ledger and
    nothing is created: no directory, no file, no table. A writing command creates the ledger;
    only the default store's directory is made for it (docs/decisions.md)."""
    chosen = chosen_store_url(url)
    store = parse_store_url(chosen)
    recorded_by = recording_context(actor, reason, host)
    if store.kind == SQLITE:
        found = probe_sqlite(store.path)
        if reading and found != LEDGER:
            return LedgerApplication("memory:", recorded_by=recorded_by)
        if found == ABSENT:
            default = url is None and not os.environ.get("SNAPLEDGER_STORE")
            check_directory(store.path, create=default)
    elif store.kind == POSTGRES:
        extras.require(extras.POSTGRES)
    app = LedgerApplication(chosen, env={"CREATE_TABLE": "no"} if reading else None, recorded_by=recorded_by)
    if reading and store.kind == POSTGRES and not app.recorder.has_tables():  # type: ignore[attr-defined]
        app.close()
        return LedgerApplication("memory:", recorded_by=recorded_by)
    return app


def ledger_service(
    app: LedgerApplication,
    storage: StoragePort,
    *,
    clock: Clock = utc_now,
    cost: CostModel | None = None,
    projection: ViewProjection | None = None,
    hypervisor: Hypervisor | None = None,
    runners: Runners | None = None,
    host: str | None = None,
    every_host: bool = False,
) -> Snapledger:
    """The service over `app` and `storage`: the persisted projection of `app` unless another
    is given, this host's processes as runners, the UTC clock. `host`: the host it acts as, by
    default the one `app` records its events with, else this machine (`this_host`).
    `every_host`: a replayed history's service, which acts for every VM (it has no disks)."""
    if host is None:
        host = app.recorded_by.host if app.recorded_by.host != UNKNOWN_HOST else this_host()
    return Snapledger(
        app,
        storage,
        clock=clock,
        cost=cost,
        projection=projection if projection is not None else PersistedProjection(app),
        hypervisor=hypervisor,
        # the processes of this machine; the host's name tells them apart from those of other
        # hosts on the same machine (namespaces, tests)
        runners=runners if runners is not None else LocalProcesses(host),
        host=None if every_host else host,
    )


def open_ledger(
    app: LedgerApplication, progress: MergeListener | None = None
) -> Snapledger:
    """The service over `app`: real disks through qemu-img, libvirt when a VM is bound to it
    (libvirt-python itself is imported only when such a VM is acted on)."""
    storage = QemuImgStorage()
    storage.progress = progress
    return ledger_service(app, storage, hypervisor=cast(Hypervisor, LibvirtOnFirstUse()))


class LibvirtOnFirstUse:
    """The libvirt adapter, made when a VM bound to libvirt is first acted on: its modules
    (and lxml) cost every process some 25 ms to import, and most commands never need them."""

    def __init__(self) -> None:
        self._adapter: Hypervisor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        # the service sets the adapter's hooks (`on_pivot`): they must reach the adapter
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._made(), name, value)

    def _made(self) -> Hypervisor:
        if self._adapter is None:
            from snapledger.adapters.libvirt.hypervisor import (
                LibvirtHypervisor,
                job_bandwidth_from_env,
                pause_after_pivot_from_env,
            )

            self._adapter = LibvirtHypervisor(
                job_bandwidth=job_bandwidth_from_env(os.environ),
                pause_after_pivot=pause_after_pivot_from_env(os.environ),
            )
        return self._adapter
