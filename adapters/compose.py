"""The composition root: the one place that picks the store, the storage adapter and the
recording context (who, where, why) chained with every event."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from snapledger.domain.ledger_hash import RecordedBy

from .event_store import LedgerApplication
from .qemu_img import QemuImgStorage
from .service import Snapledger
from .store_url import SQLITE, chosen_store_url, parse_store_url


def store_url(explicit: str | None = None) -> str:
    return chosen_store_url(explicit)


def tool_version() -> str:
    try:
        return version("snapledger")
    except PackageNotFoundError:
        return "unknown"


def recording_context(actor: str | None = None, reason: str | None = None) -> RecordedBy:
    """`--actor`, else SNAPLEDGER_ACTOR, else the login name; this host; this version."""
    who = actor or os.environ.get("SNAPLEDGER_ACTOR")
    if not who:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid (containers)
            who = f"uid:{os.getuid()}"
    return RecordedBy(who, socket.gethostname(), tool_version(), reason or None)


def open_store(
    url: str | None = None, actor: str | None = None, reason: str | None = None
) -> LedgerApplication:
    """The event store alone (verify reads raw rows before anything folds them). A SQLite
    ledger's folder is made if need be (persistence_env creates nothing)."""
    chosen = store_url(url)
    store = parse_store_url(chosen)
    if store.kind == SQLITE:
        Path(store.path).parent.mkdir(parents=True, exist_ok=True)
    return LedgerApplication(chosen, recorded_by=recording_context(actor, reason))


def open_ledger(
    app: LedgerApplication, progress: Callable[[float], None] | None = None
) -> Snapledger:
    """The service over `app`: real disks through qemu-img, libvirt when a VM is bound to it."""
    from .libvirt_hypervisor import LibvirtHypervisor, job_bandwidth_from_env  # libvirt on use

    storage = QemuImgStorage()
    storage.progress = progress
    hypervisor = LibvirtHypervisor(job_bandwidth=job_bandwidth_from_env(os.environ))
    return Snapledger(app, storage, hypervisor=hypervisor)
