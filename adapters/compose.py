"""The composition root: the one place that picks the store, the storage adapter and the
recording context (who, where, why) chained with every event."""

from __future__ import annotations

import getpass
import os
import socket
from importlib.metadata import PackageNotFoundError, version

from snapledger.domain.ledger_hash import RecordedBy

from .event_store import LedgerApplication, default_store_url
from .qemu_img import QemuImgStorage
from .service import Snapledger
from .storage_port import StoragePort


def store_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("SNAPLEDGER_STORE") or default_store_url()


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


def open_ledger(
    url: str | None = None,
    storage: StoragePort | None = None,
    recorded_by: RecordedBy | None = None,
) -> Snapledger:
    app = LedgerApplication(store_url(url), recorded_by=recorded_by or recording_context())
    return Snapledger(app, storage or QemuImgStorage())
