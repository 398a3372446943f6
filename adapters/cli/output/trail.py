"""The audit trail for people: one line per operation (`log`), or per event (`log --events`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import filesize

from snapledger.adapters.cli.output.base import local_time, print_paged, say


def show_operations(operations: list[Mapping[str, Any]], paged: bool = True) -> None:
    """`log`: one line per operation, what, on what, result, bytes, who@where, why."""
    if not operations:
        say("no operations recorded")
        return
    rows: list[list[str]] = []
    for op in operations:
        what = " ".join(str(p) for p in (op["kind"], op["vm"], op["target"]) if p)
        if op.get("description"):
            what += f" ({op['description']})"
        # what a finished operation moved (its plan's figure); not claimed for one that failed
        moved = f"  moved {filesize.decimal(op['bytes_moved'])}" if op["bytes_moved"] and op["result"] == "done" else ""
        if op.get("ended_by"):
            what += f", finished by recover {op['ended_by'][:8]}"
        words = [f'"{op["reason"]}"' if op["reason"] else "", op["why"] or ""]
        why = "".join(f"  {w}" for w in words if w)
        who = f"{op['actor'] or '?'}@{op['host'] or '?'}"
        rows.append([local_time(op["started"]), f"{op['result']:<7}", who, f"{what}{moved}{why}"])
    print_paged(rows, paged)


def _event_line(event: Mapping[str, Any]) -> str:
    """`Type: summary`, the type said once (a summary may begin with it)."""
    kind, summary = str(event["type"]).rpartition(".")[2], str(event["summary"])
    rest = summary[len(kind):].strip() if summary.startswith(kind) else summary
    return f"{kind}: {rest}" if rest else kind


def show_events(events: list[Mapping[str, Any]], paged: bool = True) -> None:
    """`log --events`: every event, one line each, with its ledger position."""
    if not events:
        say("no events recorded")
        return
    rows = [
        [f"{e['position']:>6}", local_time(e["time"]), f"{e['actor'] or '?'}@{e['host'] or '?'}",
         f"{e['vm'] or e['image'] or '-'}  {_event_line(e)}" + (f'  "{e["reason"]}"' if e["reason"] else "")]
        for e in events
    ]
    print_paged(rows, paged)
