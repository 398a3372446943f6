"""The `snapledger` command: a thin click layer over the service (reference: docs/cli.md).

This module is the group, its global options, and `main`, where every error becomes one line
`snapledger: error: ...` on stderr and the exit code of semantics.md: a user's mistake, a broken
store, a missing extra, and (as a last resort) anything unexpected. None shows a traceback unless
SNAPLEDGER_DEBUG=1. The commands are in change_commands.py, read_commands.py and
audit_commands.py; each parses its arguments, calls the service and hands a document
(projections/documents.py) to output.py. entry.py, the console script, answers `show VM` from
the persisted projection before this module is imported, and hands everything else here.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from snapledger.adapters.cli import output
from snapledger.adapters.cli.audit_commands import AUDIT_COMMANDS
from snapledger.adapters.cli.change_commands import CHANGE_COMMANDS
from snapledger.adapters.cli.options import CheckedGroup
from snapledger.adapters.cli.read_commands import READ_COMMANDS
from snapledger.adapters.cli.session import READING_COMMANDS, Context
from snapledger.adapters.eventstore.failures import describe
from snapledger.adapters.version import VERSION
from snapledger.domain.errors import SnapledgerError


@click.group(cls=CheckedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="SNAPLEDGER_STORE", help="Store URL (sqlite:////abs/path, postgresql://...).")
@click.option("--host", envvar="SNAPLEDGER_HOST", metavar="NAME",
              help="The host this runs as (default: the hostname); it changes only its own VMs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--actor", envvar="SNAPLEDGER_ACTOR", help="Who acts (recorded with every event).")
@click.option("--reason", help="Why (recorded with every event).")
@click.version_option(VERSION, prog_name="snapledger", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context, store: str | None, host: str | None, as_json: bool, actor: str | None,
    reason: str | None,
) -> None:
    """Keep the complete history of external VM disk snapshots; revert to and delete any of them."""
    c = ctx.ensure_object(Context)
    if not c.fixed:  # replay passes the replayed ledger's context in
        c.store, c.host, c.as_json, c.actor, c.reason = store, host, as_json, actor, reason
        c.reading = ctx.invoked_subcommand in READING_COMMANDS


for subcommand in (*CHANGE_COMMANDS, *READ_COMMANDS, *AUDIT_COMMANDS):
    cli.add_command(subcommand)


def main(argv: list[str] | None = None) -> int:
    session = Context()
    try:
        cli.main(args=argv, prog_name="snapledger", standalone_mode=False, obj=session)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.Abort:
        output.error("aborted")
        return 1
    except click.UsageError as error:
        output.error(error.format_message())
        return 2
    except SnapledgerError as error:
        output.error(str(error))
        return error.exit_code
    except SystemExit as done:
        return int(done.code or 0)
    except Exception as error:  # the last resort: never a traceback (unless asked for)
        return unexpected(error, session.store_label())
    return 0


def unexpected(error: Exception, store: str | None) -> int:
    """One line for a failure nothing above foresaw: the store's own errors named as such
    (adapters/eventstore/failures.py), anything else as `unexpected failure (Type: message)`; exit 1.
    SNAPLEDGER_DEBUG=1 shows the traceback too."""
    if os.environ.get("SNAPLEDGER_DEBUG", "") not in ("", "0"):
        traceback.print_exception(error)
    message = describe(error, store)
    try:
        output.error(message)
    except Exception:  # rich itself broken: plain text, still one line
        sys.stderr.write(f"snapledger: error: {message!r}\n")
    return 1


if __name__ == "__main__":  # python -m snapledger.adapters.cli.main: without entry.py's short cut
    sys.exit(main())
