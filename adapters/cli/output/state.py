"""A VM's state for people: plans, the VM, one snapshot, the tree, the image DAG, explain,
diff, prune and usage, each drawn from its JSON document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import filesize
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from snapledger.adapters.cli.output.base import (
    cells,
    console,
    in_one_directory,
    local_time,
    say,
    short,
    show_rows,
)
from snapledger.adapters.cli.visible import visible, visible_data


def show_plan(plan: Mapping[str, Any], title: str) -> None:
    """A plan document (documents.plan_document) as a table of its steps, under a line saying
    what and how; paths as base names when they share a directory (named once)."""
    done = plan["done"]
    title = visible(title)
    strategy = visible(plan["strategy"] or "")
    said = f"{title}: {strategy}" if strategy and strategy != title else title
    if not plan["steps"]:
        say(f"{said}" if strategy else f"{title}: nothing to do")
        say("no storage steps; " + ("the ledger only recorded it" if done else "only the ledger would record it"))
        return
    paths = [v for step in plan["steps"] for k, v in step.items() if isinstance(v, str) and v.startswith("/")]
    directory = in_one_directory(paths)
    if directory is not None:  # the directory once, in the title; base names below
        said = said.replace(f"{directory}/", "") + f" (in {directory})"
    say(said)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("action")
    table.add_column("details")
    table.add_column("bytes", justify="right")
    for i, step in enumerate(plan["steps"], start=1):
        details = [_detail(k, v, directory) for k, v in step.items() if k not in ("action", "bytes")]
        table.add_row(*cells(i, step["action"], " ".join(d for d in details if d), filesize.decimal(step["bytes"])))
    console.print(table)
    for note in plan["notes"]:
        say(f"note: {visible(note)}")
    moved = f"{'moved' if done else 'would move'} {filesize.decimal(plan['bytes_moved'])}"
    if "bytes_freed" in plan:  # delete: the files it deletes
        moved += f", {'freed' if done else 'would free'} {filesize.decimal(plan['bytes_freed'])}"
    say(f"{'done' if done else 'dry run, nothing changed'}; {moved}")


def _detail(key: str, value: Any, directory: str | None) -> str:
    """One detail of a step for people: sizes in units, pairs as `a=b`, the default format
    left out (the JSON has everything), a domain definition by its size."""
    if (key.endswith("_format") and value == "qcow2") or key == "scanned_bytes":
        return ""  # the default format; what a pull reads (its cost is the step's bytes)
    if key == "xml":
        return f"xml=<{len(str(value))} characters>"
    if key.endswith("bytes") and isinstance(value, int):
        return f"{key.replace('_bytes', '')}={filesize.decimal(value)}"
    if isinstance(value, Mapping):
        value = ",".join(f"{k}={short(str(v), directory)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        pairs = [item if isinstance(item, (list, tuple)) else (item,) for item in value]
        value = ",".join("=".join(short(str(part), directory) for part in pair) for pair in pairs)
    elif isinstance(value, str):
        value = short(value, directory)
    return f"{key}={'-' if value is None else value}"


def show_vm(data: Mapping[str, Any]) -> None:
    """`show VM` for people: its chains, then its snapshots (created in local time to the
    second, size, description); paths as base names when they share a directory."""
    data = visible_data(data)
    paths = [p for info in data["disks"].values() for p in info["chain"]]
    paths += [p for snap in data["snapshots"] for p in snap["disks"].values()]
    directory = in_one_directory(paths)
    say(f"VM {data['vm']}  host: {data.get('host') or '-'}  current: {data['current'] or '-'}"
        + (f"  images in {directory}" if directory else ""))
    for disk, info in data["disks"].items():
        say(f"  {disk}: {' <- '.join(short(p, directory) for p in info['chain'])}")
    if data["operation"]:
        op = data["operation"]
        say(f"  unfinished {op['kind']} {op['id']}: {op['done']}/{op['steps']} steps")
    if not data["snapshots"]:
        say("  no snapshots")
        return
    table = Table(title="snapshots", title_justify="left")
    for column in ("name", "created", "size", "frozen", "description"):  # parents: `tree`
        table.add_column(column, justify="right" if column == "size" else "left", no_wrap=column == "created",
                         overflow="fold")  # a long name wraps; it is never cut
    for snap in data["snapshots"]:
        frozen = ", ".join(f"{d}={short(p, directory)}" for d, p in snap["disks"].items())
        size = filesize.decimal(snap["allocated"]) if snap.get("allocated") is not None else None
        table.add_row(*cells(snap["name"], local_time(snap["created"]), size, frozen, snap.get("description")))
    console.print(table)


def show_diff(data: Mapping[str, Any]) -> None:
    """`diff VM N M` for people (data: projections.history.diff)."""
    data = visible_data(data)
    paths = [p for info in data["disks"].values() for way in ("from", "to") for p in info["chain"][way]]
    paths += [image["path"] for kind in data["images"].values() for image in kind]
    directory = in_one_directory(paths)

    def names(chain: list[str]) -> str:
        return " <- ".join(short(p, directory) for p in chain) or "-"

    lines = [f"VM {data['vm']}: from {_point(data, 'from')} to {_point(data, 'to')}"]
    if directory is not None:
        lines.append(f"  images in {directory}")
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
        lines.append(f"  {disk}: {names(info['chain']['from'])}")
        lines.append(f"  {' ' * len(disk)}  -> {names(info['chain']['to'])}")
    for image in data["images"]["added"]:
        lines.append(f"  + image {short(image['path'], directory)} ({image['owner']})")
    for image in data["images"]["removed"]:
        lines.append(f"  - image {short(image['path'], directory)} ({image['owner']})")
    for image in data["images"]["rebacked"]:
        lines.append(f"  ~ image {short(image['path'], directory)}: backing "
                     f"{short(image['from'] or '-', directory)} -> {short(image['to'] or '-', directory)}")
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
    paths = [*tree["present"].values(), *(p for n in tree["snapshots"].values() for p in n["disks"].values())]
    directory = in_one_directory(paths)
    root = Tree(Text(visible(tree["vm"] + (f"  images in {directory}" if directory else ""))), guide_style="dim")
    shown = ", ".join(f"{d}={short(p, directory)}" for d, p in tree["present"].items())
    present = Text(visible(f"(present: {shown})"), style="dim")
    snapshots = tree["snapshots"]

    def add(parent: Tree, name: str) -> None:
        node = snapshots[name]
        label = Text(visible(name), style="bold" if node["current"] else "")
        if node["current"]:
            label.append("  *current")
        if "allocated" in node:
            label.append(f"  {filesize.decimal(node['allocated'])}", style="dim")
        if node.get("description"):
            label.append(f"  {visible(node['description'])}", style="italic")
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
    directory = in_one_directory(data["chain"])
    chain = " <- ".join(short(p, directory) for p in data["chain"])
    lines.append(f"  chain:      {chain}" + (f"  (in {directory})" if directory and len(data["chain"]) > 1 else ""))
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


def show_prune(data: Mapping[str, Any]) -> None:
    """What `prune` deleted (or would), in order, and what it kept and why."""
    rows: list[list[Any]] = [
        [d["snapshot"], "deleted" if data["done"] else "would delete", d["strategy"],
         filesize.decimal(d["bytes_moved"]), filesize.decimal(d["bytes_freed"])]
        for d in data["deletions"]
    ]
    rows += [[name, "kept", ", ".join(why), "", ""] for name, why in data["kept_because"].items()]
    show_rows(f"prune {data['vm']}", ["snapshot", "verdict", "how / why", "moved", "freed"], rows)
    moved, freed = filesize.decimal(data["bytes_moved"]), filesize.decimal(data["bytes_freed"])
    if data["done"]:
        say(f"{len(data['deleted'])} deleted, {len(data['kept'])} kept; moved {moved}, freed {freed}")
    else:
        say(f"dry run, nothing changed; would delete {len(data['deleted'])} and keep {len(data['kept'])}; "
            f"would move {moved}, would free {freed}")


def show_usage(data: Mapping[str, Any]) -> None:
    """`usage [VM]` for people (data: documents.usage_document): per VM a table of its
    snapshots and one of its images, sizes in decimal units (rich's filesize), paths short
    when a VM's images share one directory, so that it fits 80 columns."""
    data = visible_data(data)
    if not data["vms"]:
        say("no VMs tracked")
    for vm in data["vms"]:
        say(f"VM {vm['vm']}  host: {vm['host'] or '-'}  allocated: {filesize.decimal(vm['allocated'])}"
            f"  files: {filesize.decimal(vm['size'])}")
        snapshots = Table(title="snapshots", title_justify="left")
        snapshots.add_column("snapshot", overflow="fold")
        for column in ("allocated", "freeable", "moves"):
            snapshots.add_column(column, justify="right")
        for snap in vm["snapshots"]:
            freeable = "refused" if snap["freeable"] is None else filesize.decimal(snap["freeable"])
            moves = "-" if snap["bytes_moved"] is None else filesize.decimal(snap["bytes_moved"])
            snapshots.add_row(*cells(snap["name"], filesize.decimal(snap["allocated"]), freeable, moves))
        if vm["snapshots"]:
            console.print(snapshots)
        directory = in_one_directory(image["path"] for image in vm["images"])
        title = f"images (in {directory})" if directory else "images"
        images = Table(title=Text(title), title_justify="left")
        images.add_column("image", overflow="fold")
        images.add_column("owner")
        images.add_column("allocated", justify="right")
        images.add_column("file size", justify="right")
        for image in vm["images"]:
            mark = "" if image["measured"] else " (recorded)"
            images.add_row(*cells(short(image["path"], directory), image["owner"],
                                  filesize.decimal(image["allocated"]) + mark, filesize.decimal(image["size"])))
        console.print(images)
        for snap in vm["snapshots"]:
            if snap.get("delete_refused"):
                why = snap["delete_refused"].replace(f"{directory}/", "") if directory else snap["delete_refused"]
                say(f"  {snap['name']}: delete refused now: {why}")
        for note in vm["notes"]:
            say(f"  note: {note}")
    if data["vms"]:
        say("freeable: what deleting it alone removes now, after writing 'moves' elsewhere")
