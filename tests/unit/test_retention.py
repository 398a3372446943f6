"""`prune`: restic's keep rules (projections/retention.py), and prune through the service over
simulated storage: every snapshot kept reads as before, the order chosen never moves more
bytes than deleting oldest first."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_planners import VM, contents, make, write

from snapledger.domain.errors import BadInput, DriftFound
from snapledger.domain.vm import SnapshotRecord
from snapledger.projections import retention
from snapledger.projections.retention import KeepRules, decide, parse_duration

START = datetime(2026, 1, 1, tzinfo=UTC)


def snaps(hours: list[float]) -> list[SnapshotRecord]:
    return [
        SnapshotRecord(f"s{i}", None, {"vda": f"/i/{i}"}, (START + timedelta(hours=h)).isoformat())
        for i, h in enumerate(hours)
    ]


def test_the_rules_are_restics() -> None:
    hourly_for_three_days = snaps([h for h in range(72)])
    kept = decide(hourly_for_three_days, KeepRules(last=2, periods={"daily": 3}), "s71").keep
    # the two newest; the newest of each of the last three days (s71 is also the newest of day 3)
    assert kept == {"s71": ("last", "daily", "current"), "s70": ("last",), "s47": ("daily",),
                    "s23": ("daily",)}
    within = decide(hourly_for_three_days, KeepRules(within=parse_duration("5h")), None).keep
    assert sorted(within, key=lambda n: int(n[1:])) == [f"s{i}" for i in range(66, 72)]
    weekly = decide(snaps([24 * d for d in range(21)]), KeepRules(periods={"weekly": 2}), None).keep
    # 2026-01-01 is a Thursday: ISO weeks end on the Sundays 4, 11 and 18 January
    assert sorted(weekly) == ["s17", "s20"]
    matched = decide(hourly_for_three_days, KeepRules(last=1, match="s1*"), None)
    assert matched.keep["s19"] == ("last",) and matched.keep["s5"] == ("not matched",)
    assert set(matched.remove) == {f"s{i}" for i in range(72) if str(i).startswith("1")} - {"s19"}


def test_no_rule_and_bad_durations_are_bad_input() -> None:
    with pytest.raises(BadInput, match="at least one keep rule"):
        KeepRules()
    for text in ("", "5", "h", "5x", "-1d", "1d 2h"):
        with pytest.raises(BadInput):
            parse_duration(text)
    assert parse_duration("2w3d12h") == timedelta(days=17, hours=12)


@settings(max_examples=200, deadline=None)
@given(
    hours=st.lists(st.floats(0, 24 * 400, allow_nan=False), min_size=1, max_size=40),
    last=st.integers(0, 5),
    periods=st.dictionaries(st.sampled_from(sorted(retention.PERIODS)), st.integers(1, 4)),
    within=st.none() | st.integers(0, 24 * 30),
    match=st.none() | st.sampled_from(["s1*", "s?", "*"]),
)
def test_every_snapshot_is_kept_for_a_reason_or_removed(
    hours: list[float], last: int, periods: dict[str, int], within: int | None, match: str | None
) -> None:
    if not last and not periods and within is None:
        last = 1
    records = snaps(hours)
    rules = KeepRules(last=last, periods=periods, match=match,
                      within=timedelta(hours=within) if within is not None else None)
    current = random.Random(len(hours)).choice(records).name
    decision = decide(records, rules, current)
    assert set(decision.keep) | set(decision.remove) == {s.name for s in records}
    assert not set(decision.keep) & set(decision.remove)
    assert "current" in decision.keep[current]
    for rule, count in [("last", last), *periods.items()]:
        assert sum(rule in why for why in decision.keep.values()) <= count
    newest_first = sorted(
        (s for s in records if "not matched" not in decision.keep.get(s.name, ())),
        key=lambda s: (s.created, s.name), reverse=True,
    )
    assert all("last" in decision.keep[s.name] for s in newest_first[:last])
    created = {s.name: datetime.fromisoformat(s.created) for s in records}
    assert [created[n] for n in decision.remove] == sorted(created[n] for n in decision.remove)


def test_prune_keeps_what_the_rules_say_and_every_kept_snapshot_reads_as_before() -> None:
    storage, ledger = make(snapshots=6)
    before = contents(storage, ledger)
    dry = ledger.prune(VM, KeepRules(last=2), dry_run=True)
    assert [s.snapshot for s in dry.deleted] and contents(storage, ledger) == before
    pruned = ledger.prune(VM, KeepRules(last=2))
    assert sorted(pruned.kept) == ["s5", "s6"] and sorted(s.snapshot for s in pruned.deleted) == [
        "s1", "s2", "s3", "s4"]
    after = contents(storage, ledger)
    assert after == {name: before[name] for name in ("s5", "s6", "<present>")}
    assert pruned.bytes_moved == dry.bytes_moved


def test_a_branch_point_is_kept_unless_its_branches_are_pulled() -> None:
    storage, ledger = make(snapshots=3)
    ledger.revert(VM, "s2")  # the present branches off s2, whose frozen image snapledger made
    write(storage, ledger, 9, 0x99)
    ledger.snapshot(VM, "t1")
    before = contents(storage, ledger)
    only_s2_s3 = KeepRules(last=1, match="s[23]")  # s3 kept by the rule, s2 a candidate
    pruned = ledger.prune(VM, only_s2_s3)
    assert pruned.kept["s2"] == ("branch point",) and not pruned.deleted
    assert sorted(ledger.vm(VM).snapshots) == ["s1", "s2", "s3", "t1"]
    assert contents(storage, ledger) == {n: before[n] for n in ledger.vm(VM).snapshots} | {
        "<present>": before["<present>"]}
    pulled = ledger.prune(VM, only_s2_s3, branches="pull")
    assert [s.snapshot for s in pulled.deleted] == ["s2"]
    assert contents(storage, ledger)["t1"] == before["t1"]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_order_chosen_never_moves_more_bytes_than_oldest_first(seed: int) -> None:
    rng = random.Random(seed)
    storage, ledger = make(snapshots=0)
    for n in range(1, 9):
        for _ in range(rng.randrange(0, 5)):
            write(storage, ledger, rng.randrange(64), n)
        ledger.snapshot(VM, f"s{n}")
    names = tuple(f"s{n}" for n in range(1, 8))
    view = ledger.refresh()
    oldest_first = retention.route(view, VM, names, "forbid")
    chosen = retention.cheapest_route(view, VM, names, "forbid")
    assert chosen.bytes_moved <= oldest_first.bytes_moved
    assert sorted(s.snapshot for s in chosen.steps) == sorted(s.snapshot for s in oldest_first.steps)


def test_a_snapshot_reverted_to_while_prune_runs_is_kept_as_the_current_one() -> None:
    storage, ledger = make(snapshots=4)
    real_delete = ledger.delete
    reverted = []

    def delete_after_another_process_reverts(vm: str, name: str, **options: Any) -> Any:
        if not reverted:  # between prune's planning and its first delete
            reverted.append(ledger.revert(VM, "s2"))
        return real_delete(vm, name, **options)

    ledger.delete = delete_after_another_process_reverts  # type: ignore[method-assign]
    pruned = ledger.prune(VM, KeepRules(last=1))
    assert pruned.kept["s2"] == ("current",)
    assert "s2" in ledger.vm(VM).snapshots and ledger.vm(VM).current == "s2"
    assert "s2" not in [s.snapshot for s in pruned.deleted]


def test_a_prune_whose_files_drifted_is_refused_whole_dry_run_or_not() -> None:
    # Every file any deletion touches is checked before the first one: a hard link made to a
    # frozen image refuses the dry run as the real run (exit 3), and nothing is deleted.
    storage, ledger = make(snapshots=4)
    before = contents(storage, ledger)
    storage.hard_link(ledger.vm(VM).snapshots["s2"].disks["vda"])
    for dry_run in (True, False):
        with pytest.raises(DriftFound):
            ledger.prune(VM, KeepRules(last=1), dry_run=dry_run)
    assert sorted(ledger.vm(VM).snapshots) == ["s1", "s2", "s3", "s4"]
    assert contents(storage, ledger) == before
