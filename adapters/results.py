"""What a changing command gives back, for the command line (adapters/cli) and the Python API
(adapters/api.py) alike: its document (projections/documents.py) with the operation it recorded
and the ledger position of that operation's last event (cli.md), and prune's keep rules as
both take them."""

from __future__ import annotations

from typing import Any

from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.pruning import Pruned
from snapledger.domain.steps import Plan
from snapledger.projections.documents import plan_document, prune_document
from snapledger.projections.retention import KeepRules, parse_duration

Document = dict[str, Any]


def recorded(ledger: Snapledger, document: Document, since: int = 0) -> Document:
    """`document` with `operation_id` and `position` of the last operation recorded since
    `since` (an index into `ledger.begun`, taken before the command); both null when it
    recorded nothing (a dry run)."""
    done = ledger.recorded_operations(since)
    operation, position = done[-1] if done else (None, None)
    return {**document, "operation_id": operation, "position": position}


def plan_result(
    ledger: Snapledger, plan: Plan, dry_run: bool, since: int, bytes_freed: int | None = None
) -> Document:
    """snapshot, revert, delete: the plan carried out (or, dry_run, only made)."""
    return recorded(ledger, plan_document(plan, not dry_run, bytes_freed), since)


def operations_of(ledger: Snapledger, documents: list[Document], since: int) -> list[Document]:
    """gc's plans, one operation each, in the order they ran (null ids for a dry run)."""
    done = ledger.recorded_operations(since)
    ids = done if len(done) == len(documents) else [(None, None)] * len(documents)
    return [{**d, "operation_id": op, "position": at} for d, (op, at) in zip(documents, ids, strict=True)]


def keep_rules(
    last: int = 0, hourly: int = 0, daily: int = 0, weekly: int = 0, monthly: int = 0,
    yearly: int = 0, within: str | None = None, match: str | None = None,
) -> KeepRules:
    """prune's rules, as `--keep-…` and `--match` give them."""
    periods = {"hourly": hourly, "daily": daily, "weekly": weekly, "monthly": monthly, "yearly": yearly}
    return KeepRules(
        last=last, periods={k: n for k, n in periods.items() if n},
        within=parse_duration(within) if within is not None else None, match=match,
    )


def prune_result(ledger: Snapledger, vm: str, pruned: Pruned, since: int) -> Document:
    """prune's document with each deletion's operation and the position of the last."""
    document = prune_document(
        vm, pruned.kept, [(s.snapshot, s.plan, s.bytes_freed) for s in pruned.deleted], pruned.done
    )
    done = ledger.recorded_operations(since)  # each deletion is an operation of its own
    document.update(operations=[op for op, _ in done], position=done[-1][1] if done else None)
    return document
