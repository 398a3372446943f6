"""The `snapledger` console script and `python -m snapledger.adapters.cli`.

`snapledger show VM [--json]` must stay cheap enough for scripts to run often (<= 100 ms for
the whole process on a 100,000-event ledger, docs/performance.md), so it is answered here, from
the document the persisted projection stored (adapters/checkpoint/fast_show.py), before click,
eventsourcing, the domain's aggregates or (for --json) rich are imported. Only the usual
arguments are read here, as one fixed shape; any other arguments, a store or document that is
not there or not current, or anything going wrong hands the whole of argv to the full command
line (main.py), which then gives the answer, the error or the help. This module prints no error
and creates nothing. Its imports stay light (tests/unit/test_projection.py), and both ways print
the same bytes (tests/integration/test_show_fast_path.py).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import NamedTuple

from snapledger.adapters.checkpoint.fast_show import stored_show_text
from snapledger.adapters.cli.arguments import is_text
from snapledger.adapters.eventstore.store_url import chosen_store_url
from snapledger.domain.errors import BadName
from snapledger.domain.names import check_name


class ShowRequest(NamedTuple):
    store: str | None  # --store; None: SNAPLEDGER_STORE, else the default store
    vm: str
    as_json: bool


def show_request(args: list[str]) -> ShowRequest | None:
    """`[--store URL | --store=URL] [--json] show VM [--json]` (the global options in either
    order, each at most once), with a valid VM name; None for any other arguments."""
    rest = list(args)
    store: str | None = None
    as_json = False
    while rest and rest[0] != "show":
        option = rest.pop(0)
        if option == "--json" and not as_json:
            as_json = True
        elif option == "--store" and store is None and rest:
            store = rest.pop(0)
        elif option.startswith("--store=") and store is None:
            store = option.removeprefix("--store=")
        else:
            return None
        if store is not None and store.startswith("-"):  # how click reads that is click's business
            return None
    if rest[2:] == ["--json"]:
        as_json = True
        rest = rest[:2]
    if len(rest) != 2 or not _valid_name(rest[1]):
        return None
    return ShowRequest(store, rest[1], as_json)


def _valid_name(vm: str) -> bool:
    try:
        check_name("VM", vm)
    except BadName:
        return False
    return True


def answered_from_stored_document(args: list[str]) -> bool:
    """Print `show VM`'s answer from the stored document, if the arguments are the usual ones
    and the document is current; False (nothing printed) otherwise."""
    request = show_request(args)
    if request is None:
        return False
    try:
        url = chosen_store_url(request.store)
        if not (is_text(url) and is_text(os.environ.get("SNAPLEDGER_ACTOR", ""))):
            return False  # the full command line refuses it (exit 2)
        text = stored_show_text(url, request.vm)
        if text is None:
            return False
        if request.as_json:
            sys.stdout.write(text + "\n")
        else:
            from snapledger.adapters.cli.output import show_vm  # rich: for people only

            show_vm(json.loads(text))
    except Exception:  # in doubt: the full command line answers, or reports the trouble
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if answered_from_stored_document(args):
            return 0
        # what this module spares
        from snapledger.adapters.cli.main import main as full_command_line

        # What the imports made lives as long as the process: the cyclic collector need not
        # look at it again each time it runs (a few ms per command, more on a big ledger).
        gc.freeze()
    except KeyboardInterrupt:  # Ctrl-C before click runs: reported as click's Abort is (main.py)
        sys.stderr.write("\nsnapledger: error: aborted\n")
        return 1
    return full_command_line(args)
