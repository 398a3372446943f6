"""The composition root: the one place that picks the store and the storage adapter."""

from __future__ import annotations

import os

from .event_store import LedgerApplication, default_store_url
from .qemu_img import QemuImgStorage
from .service import Snapledger
from .storage_port import StoragePort


def store_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("SNAPLEDGER_STORE") or default_store_url()


def open_ledger(url: str | None = None, storage: StoragePort | None = None) -> Snapledger:
    return Snapledger(LedgerApplication(store_url(url)), storage or QemuImgStorage())
