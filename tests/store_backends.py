"""The kinds of real store the projection tests run on: fresh ledgers of each, and SQL run on
them behind the application's back (tests/integration/conftest.py makes them fixtures)."""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg


class Backend:
    """A kind of store: fresh ledgers of it, and SQL run on them behind the application's back."""

    name: str
    # An SQL expression: the checkpoint row's state with one text replaced by another.
    edited_state: str

    def new_url(self) -> str:
        raise NotImplementedError

    def sql(self, url: str, script: str) -> int:
        """Run `script` (statements separated by `;`, no parameters); the rows changed."""
        raise NotImplementedError

    def rows(self, url: str, query: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"
    edited_state = "CAST(replace(CAST(state AS TEXT), '{old}', '{new}') AS BLOB)"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = itertools.count()

    def new_url(self) -> str:
        return f"sqlite:///{self.folder}/ledger{next(self.count)}.sqlite"

    def sql(self, url: str, script: str) -> int:
        with sqlite3.connect(url[len("sqlite:///") :]) as con:
            before = con.total_changes
            con.executescript(script)
            return con.total_changes - before

    def rows(self, url: str, query: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(url[len("sqlite:///") :]) as con:
            return con.execute(query).fetchall()


class PostgresBackend(Backend):
    """A new database on the one test server for every ledger."""

    name = "postgresql"
    edited_state = "convert_to(replace(convert_from(state, 'UTF8'), '{old}', '{new}'), 'UTF8')"

    def __init__(self, server: str) -> None:
        self.server = server

    def new_url(self) -> str:
        name = f"ledger_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.server.rsplit("/", 1)[0] + "/" + name

    def sql(self, url: str, script: str) -> int:
        changed = 0
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in filter(str.strip, script.split(";")):
                changed += max(conn.execute(statement).rowcount, 0)
        return changed

    def rows(self, url: str, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(query).fetchall()
