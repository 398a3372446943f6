"""Everything the command line prints: JSON for scripts, rich tables and trees for people.

Printing only: the documents come from projections/documents.py (and the read models' own
`to_json`), and what people see is drawn from the same documents. The only module that imports
rich. What users and other programs wrote (reasons, names, paths) reaches the terminal only
through adapters/cli/visible.py, and always as rich `Text`: its control characters shown as
escapes, and `[bold]`-style markup or `:emoji:` codes printed as they are. JSON output carries
the exact strings.
"""

from __future__ import annotations

import json
import os.path
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rich import filesize
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from snapledger.adapters.cli.visible import visible, visible_data, visible_lines
from snapledger.projections.documents import json_text

console = Console()
if not console.is_terminal:  # piped or logged: a line is never broken (a path stays greppable)
    console.width = max(console.width, 200)  # what tables are laid out in
    console.soft_wrap = True
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json_text(value) + "\n")


def emit_json_list(items: list[Any]) -> None:
    """A long JSON list (100,000 log entries) on one line: `json.dumps` without indenting runs
    the C encoder, several times faster than the indenting pure-Python one."""
    sys.stdout.write(json.dumps(items) + "\n")


def error(message: str) -> None:
    errors.print(Text(f"snapledger: error: {visible(' '.join(message.split()))}"))


def _cells(*values: object) -> list[Text]:
    """Table cells: literal text (rich reads markup in a plain string), each value visible."""
    return [Text(visible("-" if v is None else str(v))) for v in values]


def show_plan(plan: Mapping[str, Any], title: str) -> None:
    """A plan document (documents.plan_document) as a table of its steps."""
    done = plan["done"]
    title = visible(title)
    if not plan["steps"]:
        say(f"{title}: {visible(plan['strategy'] or 'nothing to do')}")
        say("no storage steps; the ledger only" + (" recorded it" if done else " would record it"))
        return
    table = Table(title=Text(f"{title}: {visible(plan['strategy'])}" if plan["strategy"] else title))
    table.add_column("#", justify="right")
    table.add_column("action")
    table.add_column("details")
    table.add_column("bytes", justify="right")
    for i, step in enumerate(plan["steps"], start=1):
        details = {k: v for k, v in step.items() if k not in ("action", "bytes")}
        if "xml" in details:  # a whole domain definition (define-domain): its size only
            details["xml"] = f"<{len(str(details['xml']))} characters>"
        table.add_row(*_cells(i, step["action"], " ".join(f"{k}={v}" for k, v in details.items()),
                              filesize.decimal(step["bytes"])))
    console.print(table)
    for note in plan["notes"]:
        say(f"note: {visible(note)}")
    said = f"{'moved' if done else 'would move'} {filesize.decimal(plan['bytes_moved'])}"
    if "bytes_freed" in plan:  # delete: the files it deletes
        said += f", {'freed' if done else 'would free'} {filesize.decimal(plan['bytes_freed'])}"
    say(f"{'done' if done else 'dry run, nothing changed'}; {said}")


def show_vm(data: Mapping[str, Any]) -> None:
    data = visible_data(data)
    say(f"VM {data['vm']}  host: {data.get('host') or '-'}  current: {data['current'] or '-'}")
    for disk, info in data["disks"].items():
        say(f"  {disk}: {' <- '.join(info['chain'])}")
    if data["operation"]:
        op = data["operation"]
        say(f"  unfinished {op['kind']} {op['id']}: {op['done']}/{op['steps']} steps")
    table = Table(title="snapshots")
    for column in ("name", "parent", "created", "frozen images"):
        table.add_column(column)
    for snap in data["snapshots"]:
        frozen = ", ".join(f"{d}={p}" for d, p in snap["disks"].items())
        table.add_row(*_cells(snap["name"], snap["parent"], snap["created"], frozen))
    console.print(table)


def show_diff(data: Mapping[str, Any]) -> None:
    """`diff VM N M` for people (data: projections.history.diff)."""
    data = visible_data(data)
    lines = [f"VM {data['vm']}: from {_point(data, 'from')} to {_point(data, 'to')}"]
    if not data["changed"]:
        lines.append("  no changes")
    if data["current"] is not None:
        lines.append(f"  current: {data['current']['from'] or '-'} -> {data['current']['to'] or '-'}")
    if data["domain_xml_changed"]:
        lines.append("  VM definition changed")
    snaps = data["snapshots"]
    for snap in snaps["added"]:
        lines.append(f"  + snapshot {snap['name']} (parent {snap['parent'] or '-'})")
    for snap in snaps["removed"]:
        lines.append(f"  - snapshot {snap['name']} (parent {snap['parent'] or '-'})")
    for snap in snaps["changed"]:
        parent, disks = snap["parent"], snap["disks"]
        if parent["from"] != parent["to"]:
            lines.append(f"  ~ snapshot {snap['name']}: parent {parent['from'] or '-'} -> {parent['to'] or '-'}")
        for disk in sorted(set(disks["from"]) | set(disks["to"])):
            was, now = disks["from"].get(disk), disks["to"].get(disk)
            if was != now:
                lines.append(f"  ~ snapshot {snap['name']} {disk}: held by {was or '-'} -> {now or '-'}")
    for disk, info in data["disks"].items():
        lines.append(f"  {disk}: {' <- '.join(info['chain']['from']) or '-'}")
        lines.append(f"  {' ' * len(disk)}  -> {' <- '.join(info['chain']['to']) or '-'}")
    for image in data["images"]["added"]:
        lines.append(f"  + image {image['path']} ({image['owner']})")
    for image in data["images"]["removed"]:
        lines.append(f"  - image {image['path']} ({image['owner']})")
    for image in data["images"]["rebacked"]:
        lines.append(f"  ~ image {image['path']}: backing {image['from'] or '-'} -> {image['to'] or '-'}")
    ops = data["operations"]
    events = []
    for key in ("started", "failed", "finished"):
        for op in ops[key]:
            verb = (op["outcome"] or key) if key == "finished" else key
            line = "  operation " + " ".join(str(w) for w in (verb, op["kind"], op["target"], op["id"]) if w)
            if key == "failed":
                line += f" at step {op['step']}: {op['error']}"
            if op["position"] is not None:
                line += f" (position {op['position']})"
            events.append((op["position"] is None, op["position"] or 0, line))
    lines += [line for _, _, line in sorted(events)]
    for line in lines:
        say(line)


def _point(data: Mapping[str, Any], end: str) -> str:
    """How `diff` names one end: the position, after the name or time it was given as."""
    given = data.get("points", {}).get(end)
    position = f"position {data[end]}"
    return position if given is None or given in (str(data[end]), f"pos:{data[end]}") else f"{given} ({position})"


def local_time(text: str | None) -> str:
    """A recorded UTC time (ISO 8601) in this machine's zone, to the second, with its offset."""
    from datetime import UTC, datetime

    if not text:
        return "-"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def show_snapshot(data: Mapping[str, Any]) -> None:
    """`show VM NAME` for people, like `virsh snapshot-info` (data: projections.snapshot_info)."""
    data = visible_data(data)
    rows = [
        ("Name", data["name"]),
        ("VM", data["vm"]),
        ("Parent", data["parent"] or "-"),
        ("Children", ", ".join(data["children"]) or "-"),
        ("Created", local_time(data["created"])),
        ("Description", data["description"] or "-"),
        ("Current", "yes" if data["current"] else "no"),
        ("State", data["state"] or "-"),
        ("Position", "-" if data["position"] is None else str(data["position"])),
        ("Definition", "recorded" if data["has_definition"] else "-"),
    ]
    lines = [f"{label + ':':<14}{value}" for label, value in rows]
    lines.append("Frozen images:" if data["disks"] else "Frozen images: -")
    lines += [f"  {disk}: {path}" for disk, path in data["disks"].items()]
    if data.get("broken"):
        lines.append(f"Broken:       {', '.join(data['broken'])} (a frozen image is gone)")
    for line in lines:
        say(line)


def show_tree(tree: Mapping[str, Any]) -> None:
    """The tree document (documents.tree_document) like `virsh snapshot-list --tree`, with the
    current snapshot marked and the present hanging below it (at the top when there is no
    current snapshot)."""
    root = Tree(Text(visible(tree["vm"])), guide_style="dim")
    shown = ", ".join(f"{d}={p}" for d, p in tree["present"].items())
    present = Text(visible(f"(present: {shown})"), style="dim")
    snapshots = tree["snapshots"]

    def add(parent: Tree, name: str) -> None:
        node = snapshots[name]
        label = Text(visible(name), style="bold" if node["current"] else "")
        if node["current"]:
            label.append("  *current")
        if "allocated" in node:
            label.append(f"  {filesize.decimal(node['allocated'])}", style="dim")
        branch = parent.add(label)
        if node["current"]:
            branch.add(present)
        for child in node["children"]:
            add(branch, child)

    if tree["current"] is None:
        root.add(present)
    for name in tree["roots"]:
        add(root, name)
    console.print(root)


def show_image_dag(data: Mapping[str, Any]) -> None:
    """The image DAG as a tree from the bottom image up: each image over its backing file, marked
    with its owner class, the snapshot it freezes and the disk it is the present of."""
    data = visible_data(data)
    images = data["images"]
    directories = {path.rpartition("/")[0] for path in images}
    short = len(directories) == 1
    title = f"images of {data['vm']}, each above its backing file"
    if short:
        title += f" (in {next(iter(directories)) or '/'})"
    root = Tree(Text(title), guide_style="dim")

    def add(parent: Tree, path: str) -> None:
        info = images[path]
        label = Text(path.rpartition("/")[2] if short else path, style="bold" if info["active_for"] else "")
        label.append("  " + " · ".join(info["marks"]), style="" if info["needed"] else "dim")
        branch = parent.add(label)
        for child in info["children"]:
            add(branch, child)

    for path in data["roots"]:
        add(root, path)
    console.print(root)


def show_explain(data: Mapping[str, Any]) -> None:
    """`explain VM PATH` for people (data: projections.explain.Explanation.to_json())."""
    data = visible_data(data)
    lines = [f"{data['path']}  (VM {data['vm']})"]
    lines.append(f"  owner:      {data['owner']}: {data['owner_reason']}")
    lines.append(f"  state:      {', '.join(data['state'])}")
    lines.append(f"  used by:    {', '.join(data['vms'])}")
    lines.append(f"  chain:      {' <- '.join(data['chain'])}")
    if data["frozen_by"]:
        held = ", ".join(f"{f['snapshot']} of {f['vm']} ({f['disk']})" for f in data["frozen_by"])
        lines.append(f"  freezes:    {held}")
    if data["needs"]:
        lines.append("  kept because:")
        needs = sorted(data["needs"], key=lambda need: need["kind"] == "below")
        lines += [f"    - {need['text']}" for need in needs]
    else:
        lines.append("  kept because: nothing needs it")
    if data["resting_on_it"]:
        lines.append("  resting on it:")
        lines += [f"    - {h['image']} ({h['owner']}): {h['text']}" for h in data["resting_on_it"]]
    if data["branches"]:
        lines.append(f"  branches:   {len(data['branches'])} histories: {', '.join(data['branches'])}")
    lines.append(f"  may write:  {'yes' if data['may_write'] else 'no'}")
    lines += [f"    - {reason}" for reason in data["write_reasons"]]
    lines.append(f"  may delete: {'yes' if data['may_delete'] else 'no'}")
    lines.append(f"    - {data['delete_reason']}")
    if data["freed_by"]:
        lines.append("  freed by:")
        for route in data["freed_by"]:
            lines.append(f"    $ {' && '.join(route['commands'])}")
            moved = f" (moves {filesize.decimal(route['bytes_moved'])})" if route["bytes_moved"] else ""
            lines.append(f"      {route['effect']}{moved}")
    else:
        lines.append(f"  freed by:   {data['nothing_frees_it']}")
    for line in lines:
        say(line)


def emit_text(text: str) -> None:
    """Text made elsewhere (an export), exactly as it is."""
    sys.stdout.write(text)


TABLE_ROWS = 500  # beyond this a rich table takes seconds to lay out; plain columns instead


def show_rows(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    header = list(columns)
    cells = [[visible("-" if v is None else str(v)) for v in row] for row in rows]
    if len(cells) > TABLE_ROWS:
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
        lines = [f"{title} ({len(cells)} rows)"]
        for line in (header, *cells):
            lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        sys.stdout.write("\n".join(lines) + "\n")
        return
    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for cell_row in cells:
        table.add_row(*(Text(cell) for cell in cell_row))
    console.print(table)


def _paged(lines: list[Text], paged: bool) -> None:
    """Lines for people; through a pager ($PAGER, else less) when on a terminal and longer than
    it; each cut at the terminal's width (on a pipe, whole)."""
    for line in lines:
        line.no_wrap, line.overflow = console.is_terminal, "ellipsis"
    if paged and console.is_terminal and len(lines) > console.height - 2:
        with console.pager(styles=False):
            for line in lines:
                console.print(line)
        return
    for line in lines:
        console.print(line)


def show_operations(operations: list[Mapping[str, Any]], paged: bool = True) -> None:
    """`log`: one line per operation, what, on what, result, bytes, who@where, why."""
    if not operations:
        say("no operations recorded")
        return
    lines = []
    for op in operations:
        what = " ".join(str(p) for p in (op["kind"], op["vm"], op["target"]) if p)
        moved = f"  moved {filesize.decimal(op['bytes_moved'])}" if op["bytes_moved"] else ""
        words = [w for w in (op["why"], op["reason"]) if w]
        why = "  " + "; ".join(f'"{w}"' if w == op["reason"] else w for w in words) if words else ""
        who = f"{op['actor'] or '?'}@{op['host'] or '?'}"
        lines.append(Text(visible(
            f"{local_time(op['started'])}  {op['result']:<11} {what}{moved}  {who}{why}"
        )))
    _paged(lines, paged)


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
            f"{e['position']:>6}  {local_time(e['time'])}  {e['vm'] or e['image'] or '-'}  "
            f"{_event_line(e)}  {e['actor'] or '?'}@{e['host'] or '?'}"
            + (f'  "{e["reason"]}"' if e["reason"] else "")
        ))
        for e in events
    ]
    _paged(lines, paged)


def show_prune(data: Mapping[str, Any]) -> None:
    """What `prune` deleted (or would), in order, and what it kept and why."""
    rows: list[list[Any]] = [
        [d["snapshot"], "deleted" if data["done"] else "would delete", d["strategy"],
         filesize.decimal(d["bytes_moved"]), filesize.decimal(d["bytes_freed"])]
        for d in data["deletions"]
    ]
    rows += [[name, "kept", ", ".join(why), "", ""] for name, why in data["kept_because"].items()]
    show_rows(f"prune {data['vm']}", ["snapshot", "verdict", "how / why", "moved", "freed"], rows)
    say(
        f"{'' if data['done'] else 'dry run, nothing changed; '}{len(data['deleted'])} deleted, "
        f"{len(data['kept'])} kept; moved {filesize.decimal(data['bytes_moved'])}, "
        f"freed {filesize.decimal(data['bytes_freed'])}"
    )


def show_usage(data: Mapping[str, Any]) -> None:
    """`usage [VM]` for people (data: documents.usage_document): per VM a table of its
    snapshots and one of its images, sizes in decimal units (rich's filesize), paths short
    when a VM's images share one directory, so that it fits 80 columns."""
    data = visible_data(data)
    if not data["vms"]:
        say("no VMs tracked")
    for vm in data["vms"]:
        say(f"VM {vm['vm']}  host: {vm['host'] or '-'}  allocated: {filesize.decimal(vm['allocated'])}"
            f"  on disk: {filesize.decimal(vm['size'])}")
        snapshots = Table(title="snapshots", title_justify="left")
        snapshots.add_column("snapshot")
        for column in ("allocated", "freeable", "moves"):
            snapshots.add_column(column, justify="right")
        for snap in vm["snapshots"]:
            freeable = "refused" if snap["freeable"] is None else filesize.decimal(snap["freeable"])
            moves = "-" if snap["bytes_moved"] is None else filesize.decimal(snap["bytes_moved"])
            snapshots.add_row(*_cells(snap["name"], filesize.decimal(snap["allocated"]), freeable, moves))
        if vm["snapshots"]:
            console.print(snapshots)
        directories = {image["path"].rpartition("/")[0] for image in vm["images"]}
        short = len(directories) == 1
        title = f"images (in {next(iter(directories)) or '/'})" if short else "images"
        images = Table(title=Text(title), title_justify="left")
        images.add_column("image", overflow="fold")
        images.add_column("owner")
        images.add_column("allocated", justify="right")
        images.add_column("on disk", justify="right")
        for image in vm["images"]:
            path = image["path"].rpartition("/")[2] if short else image["path"]
            mark = "" if image["measured"] else " (recorded)"
            images.add_row(*_cells(path, image["owner"], filesize.decimal(image["allocated"]) + mark,
                                   filesize.decimal(image["size"])))
        console.print(images)
        for snap in vm["snapshots"]:
            if snap.get("delete_refused"):
                say(f"  {snap['name']}: delete refused now: {snap['delete_refused']}")
        for note in vm["notes"]:
            say(f"  note: {note}")
    say("freeable: what deleting that snapshot alone frees now")


def say(text: str) -> None:
    """Lines for people, literally (no markup, no emoji codes), nothing in them steering the terminal."""
    console.print(Text(visible_lines(text)))


class MergeProgress:
    """How a long merge goes (commit, pull), told by the storage adapter running it (the
    MergeListener port, adapters/service/ports.py), always on stderr: stdout stays the command's
    answer (--json). Nothing for a merge done within a second. On a terminal, a rich progress
    line: the step, the files, the bytes, the rate and the time left. Elsewhere (cron, a log), a
    plain line each time another 10% is done or 10 s have passed since the last one, whichever
    comes first, and one when it ends."""

    QUIET_SECONDS = 1.0
    EVERY_FRACTION = 0.1
    EVERY_SECONDS = 10.0

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console  # None: stderr's, made when a merge first needs it
        self._clock = clock
        self._merge: tuple[str, str, str, int] | None = None  # step, source, target, total bytes
        self._started = self._fraction = 0.0
        self._said_at = self._said_fraction = 0.0
        self._said = False
        self._bar: Any = None  # rich's Progress, made once a merge has run a second
        self._task: Any = None

    def started(self, step: str, source: str, target: str, total_bytes: int) -> None:
        self.finished()
        self._merge = (step, source, target, max(total_bytes, 0))
        self._started = self._said_at = self._clock()
        self._fraction = self._said_fraction = 0.0
        self._said = False

    def advanced(self, fraction: float) -> None:
        if self._merge is None:
            return
        self._fraction = fraction = min(max(fraction, self._fraction), 1.0)
        now = self._clock()
        if now - self._started < self.QUIET_SECONDS or fraction >= 1.0:
            return
        if self._out().is_terminal:
            self._draw(fraction)
            return
        crossed = int(fraction / self.EVERY_FRACTION + 1e-9) > int(self._said_fraction / self.EVERY_FRACTION + 1e-9)
        if crossed or now - self._said_at >= self.EVERY_SECONDS:
            self._say(f"{fraction:.0%} ({self._amounts(now)})")
            self._said_at, self._said_fraction, self._said = now, fraction, True

    def finished(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None
        if self._merge is not None and self._said:
            elapsed = self._clock() - self._started
            if self._fraction >= 1.0:
                total = self._merge[3]
                moved = f"{filesize.decimal(total)} in " if total else ""
                rate = f", {filesize.decimal(int(total / elapsed))}/s" if total and elapsed > 0 else ""
                self._say(f"done, {moved}{_seconds(elapsed)}{rate}")
            else:
                self._say(f"stopped at {self._fraction:.0%} after {_seconds(elapsed)}")
        self._merge = None

    def _out(self) -> Console:
        if self._console is None:
            self._console = Console(stderr=True, highlight=False)
        return self._console

    def _say(self, what: str) -> None:
        assert self._merge is not None
        step, source, target, _ = self._merge
        line = f"snapledger: {step} {source} into {target}: {what}"
        out = self._out().file
        out.write(visible(line) + "\n")
        out.flush()

    def _amounts(self, now: float) -> str:
        """`400 MB of 1.0 GB, 20 MB/s, 30 s left`, or the time left alone if the size is not known."""
        assert self._merge is not None
        total, fraction = self._merge[3], self._fraction
        elapsed = max(now - self._started, 1e-9)
        left = f"{_seconds(elapsed * (1.0 - fraction) / fraction)} left" if fraction > 0 else "time left unknown"
        if not total:
            return left
        done = int(total * fraction)
        rate = filesize.decimal(int(done / elapsed))
        return f"{filesize.decimal(done)} of {filesize.decimal(total)}, {rate}/s, {left}"

    def _draw(self, fraction: float) -> None:
        assert self._merge is not None
        step, source, target, total = self._merge
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                ProgressColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns: list[ProgressColumn] = [TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn()]
            if total:
                columns += [DownloadColumn(), TransferSpeedColumn()]
            columns.append(TimeRemainingColumn())
            self._bar = Progress(*columns, console=self._out(), transient=True, get_time=self._clock)
            self._bar.start()
            name = os.path.basename
            what = visible(f"{step} {name(source)} into {name(target)}")
            self._task = self._bar.add_task(what, total=float(total or 1))
        self._bar.update(self._task, completed=fraction * float(total or 1))


def _seconds(seconds: float) -> str:
    """`45 s`, `12 min 5 s`, `3 h 20 min`."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
