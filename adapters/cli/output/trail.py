"""The audit trail for people: one line per operation (`log`), or per event (`log --events`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import filesize
from rich.text import Text

from snapledger.adapters.cli.output.base import local_time, print_paged, say
from snapledger.adapters.cli.visible import visible


def show_operations(operations: list[Mapping[str, Any]], paged: bool = True) -> None:
    """`log`: one line per operation, what, on what, result, bytes, who@where, why."""
    if not operations:
        say("no operations recorded")
        return
    lines = []
    for op in operations:
        what = " ".join(str(p) for p in (op["kind"], op["vm"], op["target"]) if p)
        if op.get("description"):
            what += f" ({op['description']})"
        moved = f"  moved {filesize.decimal(op['bytes_moved'])}" if op["bytes_moved"] else ""
        words = [f'"{op["reason"]}"' if op["reason"] else "", op["why"] or ""]
        why = "".join(f"  {w}" for w in words if w)
        who = f"{op['actor'] or '?'}@{op['host'] or '?'}"
        lines.append(Text(visible(
            f"{local_time(op['started'])}  {op['result']:<7}  {who}  {what}{moved}{why}"
        )))
    print_paged(lines, paged)


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
    lines = [
        Text(visible(
            f"{e['position']:>6}  {local_time(e['time'])}  {e['actor'] or '?'}@{e['host'] or '?'}  "
            f"{e['vm'] or e['image'] or '-'}  {_event_line(e)}" + (f'  "{e["reason"]}"' if e["reason"] else "")
        ))
        for e in events
    ]
    print_paged(lines, paged)
