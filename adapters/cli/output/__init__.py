"""Everything the command line prints: JSON for scripts, rich tables and trees for people.

Printing only: the documents come from projections/documents.py (and the read models' own
`to_json`), and what people see is drawn from the same documents. The only package that imports
rich (base.py: the consoles, JSON, errors, lines; state.py: a VM's state; trail.py: the log;
progress.py: merges). What users and other programs wrote (reasons, names, paths) reaches the terminal only
through adapters/cli/visible.py, and always as rich `Text`: its control characters shown as
escapes, and `[bold]`-style markup or `:emoji:` codes printed as they are. JSON output carries
the exact strings.
"""

from snapledger.adapters.cli.output.base import (
    console,
    emit_json,
    emit_json_list,
    emit_text,
    error,
    errors,
    local_time,
    say,
    show_rows,
)
from snapledger.adapters.cli.output.progress import MergeProgress
from snapledger.adapters.cli.output.state import (
    show_diff,
    show_explain,
    show_image_dag,
    show_plan,
    show_prune,
    show_snapshot,
    show_tree,
    show_usage,
    show_vm,
)
from snapledger.adapters.cli.output.trail import show_events, show_operations

__all__ = [
    "MergeProgress", "console", "emit_json", "emit_json_list", "emit_text", "error", "errors",
    "local_time", "say", "show_diff", "show_events", "show_explain", "show_image_dag",
    "show_operations", "show_plan", "show_prune", "show_rows", "show_snapshot", "show_tree",
    "show_usage", "show_vm",
]
