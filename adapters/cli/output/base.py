"""The command line's printing, the parts every other printing module uses: the consoles, JSON
for scripts, one-line errors, plain lines and tables for people, times as people read them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from snapledger.adapters.cli.visible import visible, visible_lines
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


def cells(*values: object) -> list[Text]:
    """Table cells: literal text (rich reads markup in a plain string), each value visible."""
    return [Text(visible("-" if v is None else str(v))) for v in values]


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
    table = Table(title=title, title_justify="left")
    for column in header:
        table.add_column(column, overflow="fold")  # a long name wraps; it is never cut
    for cell_row in cells:
        table.add_row(*(Text(cell) for cell in cell_row))
    console.print(table)


def in_one_directory(paths: Iterable[str]) -> str | None:
    """The directory every path is in, if there is one: then people read base names under a
    title that names it once (80 columns hold few absolute paths)."""
    directories = {str(path).rpartition("/")[0] for path in paths}
    return next(iter(directories)) or "/" if len(directories) == 1 else None


def short(path: str, directory: str | None) -> str:
    """`path`'s base name if it lies directly in `directory` (a sibling like `/img2/x` beside
    `/img` keeps its whole path); else the whole path."""
    folder, _, name = path.rpartition("/")
    return name if directory is not None and (folder or "/") == directory else path


def print_paged(rows: list[list[str]], paged: bool) -> None:
    """Entries for people, one per row. On a pipe, each row is one line, whole (grep, wc -l).
    On a terminal, the last column wraps under itself and the others stay put, so nothing is
    cut at 80 columns; longer than the terminal, it goes through the pager."""
    if not console.is_terminal:
        for row in rows:
            console.print(Text(visible("  ".join(cell for cell in row if cell))))
        return
    grid = Table.grid(padding=(0, 2))
    for _ in rows[0][:-1]:
        grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for row in rows:
        grid.add_row(*(Text(visible(cell)) for cell in row))
    if not paged:
        console.print(grid)
        return
    with console.capture() as captured:
        console.print(grid)
    shown = captured.get()
    if shown.count("\n") > console.height - 2:
        page(shown)
    else:
        sys.stdout.write(shown)


def page(text: str) -> None:
    """`text` through $PAGER (else `less -FRX`, if there is one); a pager that can't be run or
    fails shows nothing, so then the text is written as it is."""
    import os
    import shlex
    import shutil
    import subprocess

    command = shlex.split(os.environ.get("PAGER", "")) or (["less", "-FRX"] if shutil.which("less") else [])
    if command:
        try:
            if subprocess.run(command, input=text, text=True, check=False).returncode == 0:
                return
        except OSError:
            pass
    sys.stdout.write(text)


def say(text: str) -> None:
    """Lines for people, literally (no markup, no emoji codes), nothing in them steering the terminal."""
    console.print(Text(visible_lines(text)))
