"""The event store: an eventsourcing Application whose persistence is chosen by a store URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol

from snapledger.domain.errors import BadInput

NOTIFICATION_BATCH = 20_000  # big batches keep per-query cost out of a rebuild


def default_store_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base, 'snapledger', 'ledger.sqlite').resolve()}"


def persistence_env(url: str) -> dict[str, str]:
    """Map a SQLAlchemy-style store URL to eventsourcing's environment settings."""
    if url in ("memory:", "memory://"):
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise BadInput(f"bad store URL {url!r}: use sqlite:////absolute/path or sqlite:///relative")
        path = Path(unquote(url[len("sqlite:///") :])).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.hostname or not parts.path.strip("/"):
            raise BadInput(f"bad store URL {url!r}: use postgresql://user@host:port/db")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(parts.path.strip("/")),
            "POSTGRES_HOST": parts.hostname,
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or os.environ.get("USER", "postgres")),
        }
        if parts.password is not None:
            env["POSTGRES_PASSWORD"] = unquote(parts.password)
        return env
    raise BadInput(f"bad store URL {url!r}: expected sqlite://, postgresql:// or memory:")


class LedgerApplication(Application[UUID]):
    """Thin: the repository loads aggregates, `save` stores their new events atomically."""

    name = "snapledger"

    def __init__(self, store_url: str = "memory:", env: dict[str, Any] | None = None) -> None:
        self.store_url = store_url
        super().__init__(env={**persistence_env(store_url), **(env or {})})

    def events_after(self, position: int) -> Iterator[tuple[DomainEventProtocol[UUID], int]]:
        """Every event recorded after `position`, in ledger order, with its position."""
        while True:
            batch = self.recorder.select_notifications(
                start=position, limit=NOTIFICATION_BATCH, inclusive_of_start=False
            )
            for notification in batch:
                yield self.mapper.to_domain_event(notification), notification.id
            if len(batch) < NOTIFICATION_BATCH:
                return
            position = batch[-1].id
