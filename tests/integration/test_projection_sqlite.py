"""The SQLite ledger's fast path for `show`: the stored document, read with sqlite3 alone, prints
the same as the folded ledger, and is not used when it is missing or not current. (The
projection's contract on every store: test_projection_stores.py.)"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from projection_helpers import CLI, rebuilt, show, with_history

from snapledger.adapters.projection_store import DOCS, stored_show_text
from snapledger.projections.documents import json_text, vm_document


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ledger.sqlite"


def sql(url: str, statement: str) -> None:
    with sqlite3.connect(url[len("sqlite:///") :]) as con:
        con.execute(statement)


@pytest.mark.parametrize("as_json", [True, False])
def test_show_prints_the_same_from_the_projection_and_from_the_folded_ledger(
    url: str, as_json: bool
) -> None:
    with_history(url)
    args = ("a", "--json") if as_json else ("a",)
    assert stored_show_text(url, "a") is not None
    fast = show(url, *args).stdout
    sql(url, f"DELETE FROM {DOCS} WHERE vm = 'a'")
    assert stored_show_text(url, "a") is None
    slow = show(url, *args).stdout  # folds (from the checkpoint) and stores the document again
    assert stored_show_text(url, "a") is not None
    assert fast == slow == show(url, *args).stdout
    if as_json:
        assert json.loads(fast)["current"] == "s2"
    else:
        assert "VM a  current: s2" in fast


def test_show_works_without_the_documents_table_and_says_what_the_ledger_says(url: str) -> None:
    ledger, _ = with_history(url)
    expected = json_text(vm_document(rebuilt(ledger.app), "a")) + "\n"
    sql(url, f"DROP TABLE {DOCS}")
    assert stored_show_text(url, "a") is None
    assert show(url, "a", "--json").stdout == expected
    assert stored_show_text(url, "a") == expected[:-1]  # and the next show is fast again


def test_show_of_an_unknown_vm_is_the_usual_error(url: str) -> None:
    with_history(url)
    env = {**os.environ, "SNAPLEDGER_STORE": url}
    done = subprocess.run([*CLI, "show", "nope", "--json"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode != 0 and done.stderr.startswith("snapledger: error: no VM named 'nope'")
