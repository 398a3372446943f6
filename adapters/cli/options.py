"""click's side of every command: arguments checked as text once parsed, the options accepted
after the command too, --dry-run, and the run's Context handed to each command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from snapledger.adapters.cli.arguments import check_text
from snapledger.adapters.cli.session import Context, names_to_complete

F = TypeVar("F", bound=Callable[..., Any])


def _param_name(ctx: click.Context, param: click.Parameter) -> str:
    """How an error names a parameter: `--reason`, `VM`, or the variable it came from."""
    if param.name and ctx.get_parameter_source(param.name) == ParameterSource.ENVIRONMENT:
        return str(param.envvar)
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name


def _check_params(ctx: click.Context) -> None:
    for param in ctx.command.get_params(ctx):
        value = ctx.params.get(param.name or "")
        if value is None or param.type is click.UNPROCESSED:  # replay's command checks its own
            continue
        check_text(_param_name(ctx, param), value if isinstance(value, tuple) else [value])


class CheckedCommand(click.Command):
    """A command whose arguments are checked as text once parsed (adapters/cli/arguments.py)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        _check_params(ctx)
        return rest


class CheckedGroup(click.Group):
    command_class = CheckedCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        _check_params(ctx)
        return rest


def command(name: str | None = None, **settings: Any) -> Callable[[Callable[..., Any]], CheckedCommand]:
    """A command of the group (main.py adds it), its arguments checked as text."""
    return click.command(name, cls=CheckedCommand, **settings)


def after_command_options(command: F) -> F:
    """`--json`, `--actor` and `--reason` are accepted after the command too
    (`snapledger show vm --json`, `snapledger snapshot vm s1 --reason "before upgrade"`)."""

    def remember(ctx: click.Context, param: click.Parameter, value: object) -> object:
        if value:
            check_text(_param_name(ctx, param), [value])
            setattr(ctx.find_object(Context), str(param.name), value)
        return value

    command = click.option("--reason", expose_value=False, callback=remember, help="Why (recorded with every event).")(command)
    command = click.option("--actor", expose_value=False, callback=remember, help="Who acts (recorded with every event).")(command)
    return click.option(
        "--json", "as_json", is_flag=True, expose_value=False, callback=remember, help="JSON output"
    )(command)


def reads_only(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--dry-run's callback: the command then only reads (READING_COMMANDS)."""
    context = ctx.find_object(Context)
    if value and context is not None:
        context.reading = True
    return value


dry_run_option = click.option("--dry-run", is_flag=True, callback=reads_only, help="Show the plan; change nothing.")

pass_context = click.make_pass_decorator(Context)


def _store_given(ctx: click.Context) -> str | None:
    """`--store` (or SNAPLEDGER_STORE, which click reads for it) as given on the line so far."""
    store = ctx.find_root().params.get("store")
    return store if isinstance(store, str) else None


def _complete_vm(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [name for name in names_to_complete(_store_given(ctx)) if name.startswith(incomplete)]


def complete_snapshot(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    vm = ctx.params.get("vm")
    if not isinstance(vm, str):
        return []
    return [name for name in names_to_complete(_store_given(ctx), vm) if name.startswith(incomplete)]


def vm_argument(required: bool = True) -> Callable[[F], F]:
    """A VM of the ledger: the shell completes its name (docs/completion.md)."""
    return click.argument("vm", required=required, shell_complete=_complete_vm)


def snapshot_argument() -> Callable[[F], F]:
    """A snapshot of the VM named before it: the shell completes its name."""
    return click.argument("name", shell_complete=complete_snapshot)
