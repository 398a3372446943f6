"""One run of the command line: the global options, and the ledger opened on first use."""

from __future__ import annotations

import json

from snapledger.adapters.checkpoint.fast_show import stored_show_text
from snapledger.adapters.cli.output import MergeProgress
from snapledger.adapters.compose import open_ledger, open_store
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.store_url import chosen_store_url, parse_store_url
from snapledger.adapters.service.commands import Snapledger
from snapledger.domain.errors import SnapledgerError
from snapledger.projections.documents import vm_document, vm_rows

# Commands that only read: on a store that isn't there they see an empty ledger, and they create
# nothing (no directory, no file, no table). Any command given --dry-run reads only too.
READING_COMMANDS = frozenset({"list", "show", "tree", "log", "explain", "export", "verify", "diff", "replay",
                               "usage"})


class Context:
    def __init__(self) -> None:
        self.store: str | None = None  # --store, or SNAPLEDGER_STORE (None: the default store)
        self.as_json = False
        self.actor: str | None = None
        self.reason: str | None = None
        self.host: str | None = None  # --host, or SNAPLEDGER_HOST (None: the hostname)
        self.reading = False  # the command only reads: nothing may be created
        self.fixed = False  # a ledger given (replay): the global options don't choose one
        self._ledger: Snapledger | None = None
        self._app: LedgerApplication | None = None

    @classmethod
    def given(cls, app: LedgerApplication, ledger: Snapledger, as_json: bool) -> Context:
        """A context over a ledger opened elsewhere (replay's throwaway store)."""
        context = cls()
        context.as_json, context.fixed = as_json, True
        context._app, context._ledger = app, ledger
        return context

    @property
    def ledger_app(self) -> LedgerApplication:
        """The store alone, without folding the ledger (verify reads raw rows first)."""
        if self._app is None:
            self._app = open_store(
                self.store, self.actor, self.reason, reading=self.reading, host=self.host
            )
        return self._app

    @property
    def ledger(self) -> Snapledger:
        if self._ledger is None:
            self._ledger = open_ledger(self.ledger_app, MergeProgress())
        return self._ledger

    def store_label(self) -> str | None:
        """How an error message names the store (None: no store of its own, or a bad URL)."""
        if self.fixed:
            return None
        try:
            return parse_store_url(chosen_store_url(self.store)).label
        except SnapledgerError:
            return None

    def stored_show_text(self, vm: str) -> str | None:
        """`show VM --json`'s text from the persisted projection, if it is current; else None.
        (The entry module asks first, for the usual arguments; this is for the others.)"""
        if self.fixed:  # a ledger given (replay)
            return None
        return stored_show_text(chosen_store_url(self.store), vm)


def names_to_complete(store: str | None, vm: str | None = None) -> list[str]:
    """For shell completion: the VMs in the ledger at `store` (None: SNAPLEDGER_STORE, else the
    default store), or with `vm` that VM's snapshots. Only reads: a store that isn't there, an
    unknown VM or any trouble at all gives no names, never an error, and nothing is created."""
    context = Context()
    context.store, context.reading = store, True
    try:
        if vm is None:
            return [row["vm"] for row in vm_rows(context.ledger.refresh())]
        stored = context.stored_show_text(vm)
        document = json.loads(stored) if stored else vm_document(context.ledger.view_of_one(vm), vm)
        return [snapshot["name"] for snapshot in document["snapshots"]]
    except Exception:  # a shell asking: no names is the answer
        return []
    finally:
        if context._ledger is not None:
            context._ledger.close()
