"""The Python API (docs/api.md): `snapledger.open(url)` gives a `Ledger` whose methods do what
the commands of the same name do and return what they print with `--json` (docs/cli.md).

A thin layer, like the command line beside it (adapters/cli): each method opens the store
through the composition root on first use, calls the same service (adapters/service) or the
same audit code (adapters/audit.py), and returns the same document (projections/documents.py).
Reading methods create nothing: on a store that isn't there they see an empty ledger; the first
method that changes something opens the store for writing, creating it. Errors are raised as
snapledger's own (snapledger.domain.errors.SnapledgerError and its kinds, each with the
`exit_code` the command line would exit with); nothing is printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from snapledger.adapters import results
from snapledger.adapters.audit import log_entries, log_operations, verify_ledger
from snapledger.adapters.checkpoint.fast_show import stored_show_text
from snapledger.adapters.compose import open_ledger, open_store
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.store_url import chosen_store_url, parse_store_url
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.queries import past_view
from snapledger.domain.errors import BadInput
from snapledger.domain.names import check_disk_target
from snapledger.domain.steps import BranchOption, Strategy
from snapledger.projections.documents import vm_document, vm_rows

Document = dict[str, Any]
Documents = list[dict[str, Any]]


def open(
    store: str | None = None, *, actor: str | None = None, reason: str | None = None,
    host: str | None = None,
) -> Ledger:
    """The ledger at `store` (a URL as `--store` takes; None: SNAPLEDGER_STORE, else the
    default store). `actor`, `reason` and `host` are `--actor`, `--reason` and `--host`.
    A malformed URL is BadInput at once; nothing is opened or created until a method needs it."""
    parse_store_url(chosen_store_url(store))
    return Ledger(store, actor=actor, reason=reason, host=host)


class Ledger:
    """One ledger, opened on first use; close it (or use `with`) to let go of its connections."""

    def __init__(
        self, store: str | None, *, actor: str | None = None, reason: str | None = None,
        host: str | None = None,
    ) -> None:
        self.store = store
        self.actor, self.reason, self.host = actor, reason, host
        self._service: Snapledger | None = None
        self._store: LedgerApplication | None = None  # the service's store
        self._reading = True  # what the open service was opened for

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = self._store = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _opened(self, reading: bool) -> Snapledger:
        """The service; opened for reading (nothing created) until something is changed."""
        if self._service is not None and (reading or not self._reading):
            return self._service
        self.close()
        self._store = open_store(self.store, self.actor, self.reason, reading=reading, host=self.host)
        self._service, self._reading = open_ledger(self._store), reading
        return self._service

    def _app(self) -> LedgerApplication:
        """The store, opened for reading if it isn't open."""
        self._opened(reading=True)
        assert self._store is not None
        return self._store

    # ---- reading: show, list, log, verify ------------------------------------------------

    def show(self, vm: str, *, at_event: int | None = None, at: str | None = None) -> Document:
        """`show VM [--at-event N | --at TIME] --json`."""
        if at_event is not None and (isinstance(at_event, bool) or not isinstance(at_event, int)):
            raise BadInput(f"at_event is a ledger position (a whole number), not {at_event!r}")
        if at_event is not None or at is not None:
            ledger = self._opened(reading=True)
            return vm_document(past_view(ledger, vm, at_event, at), vm)
        if (text := stored_show_text(chosen_store_url(self.store), vm)):
            stored: Document = json.loads(text)  # the persisted document, as `show` prints it
            return stored
        return vm_document(self._opened(reading=True).view_of_one(vm), vm)

    def list(self, *, mine: bool = False) -> Documents:
        """`list [--mine] --json`."""
        ledger = self._opened(reading=True)
        return vm_rows(ledger.refresh(), ledger.host if mine else None)

    def log(
        self, vm: str | None = None, *, since: str | None = None, until: str | None = None,
        types: Iterable[str] = (), by: str | None = None, count: int | None = None,
        reverse: bool = False, operations: bool = False,
    ) -> Documents:
        """`log [VM] [--since T] [--until T] [--type TYPE …] [--by WHO] [-n N] [--reverse]
        [--operations] --json`: every event, or with `operations` one entry per operation."""
        if isinstance(types, str):  # one type, not its letters
            types = [types]
        if operations:
            found = log_operations(self._app(), vm, since, until, tuple(types), by, count, reverse)
            return [op.to_json() for op in found]
        return [e.to_json() for e in log_entries(self._app(), vm, since, until, tuple(types), by, count, reverse)]

    def verify(self, vm: str | None = None, *, expect_head: str | None = None) -> Document:
        """`verify [VM] [--expect-head HASH] --json`: the document, findings included (the
        command line then exits 3; here `document["ok"]` is False)."""
        app = self._app()
        return verify_ledger(app, lambda: self._opened(reading=True), vm, expect_head).document()

    # ---- changing: snapshot, revert, delete, prune (each with dry_run) -----------------

    def snapshot(
        self, vm: str, name: str | None = None, *, overlays: Mapping[str, str] | None = None,
        exclude: Iterable[str] = (), description: str | None = None, dry_run: bool = False,
    ) -> Document:
        """`snapshot VM [NAME] [--overlay DISK=PATH …] [--exclude DISK …] [--description T]
        [--dry-run] --json`; without NAME, the UTC time."""
        ledger = self._opened(reading=dry_run)
        if name is None:
            name = ledger.new_snapshot_name(vm)
        since = len(ledger.begun)
        plan = ledger.snapshot(vm, name, _disks(overlays), set(exclude), description, dry_run=dry_run)
        return results.plan_result(ledger, plan, dry_run, since)

    def revert(
        self, vm: str, name: str, *, overlays: Mapping[str, str] | None = None,
        running: bool = False, dry_run: bool = False,
    ) -> Document:
        """`revert VM NAME [--overlay DISK=PATH …] [--running] [--dry-run] --json`."""
        ledger = self._opened(reading=dry_run)
        since = len(ledger.begun)
        plan = ledger.revert(vm, name, _disks(overlays), dry_run=dry_run, running=running)
        return results.plan_result(ledger, plan, dry_run, since)

    def delete(
        self, vm: str, name: str, *, strategy: str = "auto", branches: str = "forbid",
        dry_run: bool = False,
    ) -> Document:
        """`delete VM NAME [--strategy auto|commit|pull] [--branches forbid|pull|keep]
        [--dry-run] --json`."""
        _choice("strategy", strategy, Strategy)
        _choice("branches", branches, BranchOption)
        ledger = self._opened(reading=dry_run)
        since = len(ledger.begun)
        deletion = ledger.deletion(vm, name, strategy, branches, dry_run=dry_run)
        return results.plan_result(ledger, deletion.plan, dry_run, since, deletion.bytes_freed)

    def prune(
        self, vm: str, *, keep_last: int = 0, keep_hourly: int = 0, keep_daily: int = 0,
        keep_weekly: int = 0, keep_monthly: int = 0, keep_yearly: int = 0,
        keep_within: str | None = None, match: str | None = None, branches: str = "forbid",
        dry_run: bool = False,
    ) -> Document:
        """`prune VM --keep-… [--match GLOB] [--branches …] [--dry-run] --json`."""
        _choice("branches", branches, BranchOption)
        rules = results.keep_rules(
            keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, match
        )
        ledger = self._opened(reading=dry_run)
        since = len(ledger.begun)
        return results.prune_result(ledger, vm, ledger.prune(vm, rules, branches, dry_run=dry_run), since)


def _disks(overlays: Mapping[str, str] | None) -> dict[str, str]:
    """`--overlay` pairs: each disk target checked, as the command line checks them."""
    chosen = dict(overlays or {})
    for disk, path in chosen.items():
        check_disk_target(disk)
        if not path:
            raise BadInput(f"overlay of disk {disk!r}: no path given")
    return chosen


def _choice(name: str, value: str, allowed: Iterable[str]) -> None:
    choices = [str(choice) for choice in allowed]
    if value not in choices:
        raise BadInput(f"{name} is one of {', '.join(choices)}, not {value!r}")
