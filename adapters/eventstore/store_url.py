"""Store URLs (cli.md): the one parser, used by the event store and by `show`'s fast path.

Light on purpose: the standard library and domain/errors.py only, so that the fast path of
`snapledger show VM --json` can use it before eventsourcing is imported. Parsing looks at no
file; what is at a SQLite path is adapters/eventstore/probe.py's business.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from snapledger.domain.errors import BadStoreUrl, StoreUnusable

MEMORY = "memory"
SQLITE = "sqlite"
POSTGRES = "postgresql"

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class PostgresAddress:
    host: str
    port: int
    dbname: str
    user: str
    password: str  # "" when the URL has none: libpq then looks in ~/.pgpass (or trust)


@dataclass(frozen=True)
class StoreUrl:
    """What a store URL names: an in-process store, a SQLite file or a PostgreSQL database."""

    kind: str  # MEMORY, SQLITE or POSTGRES
    path: str = ""  # SQLITE: the file, absolute
    postgres: PostgresAddress | None = None

    @property
    def label(self) -> str:
        """How messages name the store (never with a password)."""
        if self.kind == SQLITE:
            return self.path
        if self.postgres is not None:
            pg = self.postgres
            return f"postgresql://{pg.user}@{pg.host}:{pg.port}/{pg.dbname}"
        return "memory:"


def parse_store_url(url: str) -> StoreUrl:
    """A SQLAlchemy-style store URL; BadStoreUrl (exit 2) for anything malformed."""
    if url in ("memory:", "memory://"):
        return StoreUrl(MEMORY)
    if not url:
        raise BadStoreUrl("the store URL is empty: use sqlite:////absolute/path or postgresql://user@host/db")
    if "\0" in url:
        raise _bad(url, "it contains a NUL character")
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise _bad(url, str(error)) from None
    if parts.scheme == SQLITE:
        return StoreUrl(SQLITE, path=_sqlite_path(url))
    if parts.scheme in POSTGRES_SCHEMES:
        return StoreUrl(POSTGRES, postgres=_postgres_address(url))
    raise _bad(url, "expected sqlite://, postgresql:// or memory:")


def _bad(url: str, why: str) -> BadStoreUrl:
    shown = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)  # never echo a password
    return BadStoreUrl(f"bad store URL {shown!r}: {why}")


def _sqlite_path(url: str) -> str:
    if not url.startswith(SQLITE_PREFIX) or len(url) <= len(SQLITE_PREFIX):
        raise _bad(url, "use sqlite:////absolute/path or sqlite:///relative")
    raw = unquote(url[len(SQLITE_PREFIX) :])
    if "\0" in raw:
        raise _bad(url, "its path contains a NUL character (%00)")
    if raw.endswith("/"):
        raise _bad(url, "its path names a directory, not a file")
    if ":memory:" in raw or "mode=memory" in raw:
        # eventsourcing would open such a name as an in-memory database: nothing would be kept
        raise _bad(url, "a SQLite file name can't contain ':memory:' or 'mode=memory'")
    return str(Path(raw).absolute())


def _postgres_address(url: str) -> PostgresAddress:
    parts = urlsplit(url)
    dbname = unquote(parts.path.strip("/"))
    try:
        port = parts.port
    except ValueError as error:  # not a number, or out of range
        raise _bad(url, str(error)) from None
    if not parts.hostname or not dbname:
        raise _bad(url, "use postgresql://user@host:port/db")
    if port == 0:
        raise _bad(url, "port 0 is not a port")
    return PostgresAddress(
        host=parts.hostname,
        port=port or 5432,
        dbname=dbname,
        user=unquote(parts.username or os.environ.get("USER", "postgres")),
        password=unquote(parts.password or ""),
    )


def chosen_store_url(explicit: str | None) -> str:
    """`--store` (even an empty one: that is bad input), else SNAPLEDGER_STORE, else the default."""
    if explicit is not None:
        return explicit
    return os.environ.get("SNAPLEDGER_STORE") or default_store_url()


def default_store_url() -> str:
    """The store when neither --store nor SNAPLEDGER_STORE says (cli.md)."""
    base = os.environ.get("XDG_DATA_HOME")
    if not base:
        try:
            base = str(Path.home() / ".local" / "share")
        except RuntimeError:  # no HOME, and no passwd entry for this uid
            raise StoreUnusable(
                "no home directory to keep the default store in: set XDG_DATA_HOME, HOME or --store"
            ) from None
    return f"{SQLITE_PREFIX}{Path(base, 'snapledger', 'ledger.sqlite').resolve()}"


def sqlite_file(url: str) -> str | None:
    """The file of a `sqlite:///` store URL; None for any other URL, or a malformed one."""
    try:
        parsed = parse_store_url(url)
    except BadStoreUrl:
        return None
    return parsed.path if parsed.kind == SQLITE else None
