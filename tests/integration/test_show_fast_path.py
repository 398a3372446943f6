"""`show`'s fast path, on SQLite (sqlite3 alone) and PostgreSQL (one psycopg connection): the
stored document prints the same as the folded ledger, and is not used when it is missing, not
current, or edited. (The projection's contract on every store: test_projection_stores.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from projection_helpers import CLI, imported_modules, rebuilt, show, with_history
from store_backends import Backend

from snapledger.adapters.checkpoint.fast_show import stored_show_text
from snapledger.adapters.checkpoint.rules import DOCS, TRACKING
from snapledger.projections.documents import json_text, vm_document

# What only the full command line imports: none of it may be needed to answer from the document.
FULL_COMMAND_LINE = {"click", "eventsourcing", "snapledger.adapters.cli.main", "snapledger.domain.vm"}


@pytest.mark.parametrize("as_json", [True, False])
def test_show_prints_the_same_from_the_projection_and_from_the_folded_ledger(
    backend: Backend, url: str, as_json: bool
) -> None:
    """Three ways, the same bytes: the entry module prints the stored document (the full command
    line not even imported), the full command line prints it (for arguments the entry module
    leaves to it), and the full command line folds the ledger when there is none."""
    with_history(url)
    args = ("a", "--json") if as_json else ("a",)
    assert stored_show_text(url, "a") is not None
    answered = show(url, *args, report_imports=True)
    assert not imported_modules(answered) & FULL_COMMAND_LINE
    fast = answered.stdout
    full = show(url, *args, "--reason", "not the entry's shape", report_imports=True)
    assert FULL_COMMAND_LINE <= imported_modules(full)
    assert stored_show_text(url, "a") is not None
    backend.sql(url, f"DELETE FROM {DOCS} WHERE vm = 'a'")
    assert stored_show_text(url, "a") is None
    slow = show(url, *args).stdout  # folds (from the checkpoint) and stores the document again
    assert stored_show_text(url, "a") is not None
    assert fast == full.stdout == slow == show(url, *args).stdout
    if as_json:
        assert json.loads(fast)["current"] == "s2"
    else:
        assert f"VM a  host: {socket.gethostname()}  current: s2" in fast  # the library acts as this machine


def test_show_works_without_the_documents_table_and_says_what_the_ledger_says(
    backend: Backend, url: str
) -> None:
    ledger, _ = with_history(url)
    expected = json_text(vm_document(rebuilt(ledger.app), "a")) + "\n"
    backend.sql(url, f"DROP TABLE {DOCS}")
    assert stored_show_text(url, "a") is None
    assert show(url, "a", "--json").stdout == expected
    assert stored_show_text(url, "a") == expected[:-1]  # and the next show is fast again


def test_the_fast_path_is_not_taken_behind_the_ledger_or_on_an_edited_row(
    backend: Backend, url: str
) -> None:
    ledger, _ = with_history(url)
    assert stored_show_text(url, "a") is not None
    vm = ledger.vm("a")
    vm.record_drift(["recorded by a process that died before its projection update"],
                    "2026-11-26T00:00:00+00:00")
    ledger.app.save(vm)  # the ledger moves on, its projection does not
    assert stored_show_text(url, "a") is None
    expected = json_text(vm_document(rebuilt(ledger.app), "a")) + "\n"
    assert show(url, "a", "--json").stdout == expected  # folds the new event, saves
    assert stored_show_text(url, "a") == expected[:-1]
    backend.sql(url, f"UPDATE {TRACKING} SET archived = archived + 1")
    assert stored_show_text(url, "a") is None  # a tracking row edited by hand
    assert show(url, "a", "--json").stdout == expected
    assert stored_show_text(url, "a") == expected[:-1]
    backend.sql(url, f"UPDATE {DOCS} SET doc = replace(doc, '\"s2\"', '\"s9\"') WHERE vm = 'a'")
    assert stored_show_text(url, "a") is None  # the document's checksum no longer matches
    assert show(url, "a", "--json").stdout == expected


def test_show_of_an_unknown_vm_is_the_usual_error(url: str) -> None:
    with_history(url)
    env = {**os.environ, "SNAPLEDGER_STORE": url}
    done = subprocess.run([*CLI, "show", "nope", "--json"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode != 0 and done.stderr.startswith("snapledger: error: no VM named 'nope'")


def test_an_unreachable_postgresql_server_is_no_fast_path() -> None:
    assert stored_show_text("postgresql://nobody@127.0.0.1:1/none", "a") is None
    assert stored_show_text("postgresql:///no-host", "a") is None
