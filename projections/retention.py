"""`prune`: which snapshots restic's keep rules hold (semantics.md, "Retention, names, space"),
and the order to delete the others in. Pure functions of a view.

The rules, as `restic forget` has them: `last N` keeps the N newest; `hourly`/`daily`/`weekly`/
`monthly`/`yearly` N keep the newest snapshot of each of the last N such periods (UTC; weeks are
ISO weeks) that have one; `within D` keeps every snapshot taken within D of the newest one.
Snapshots are ordered by creation time (then name). Only snapshots matching `--match` are
candidates; the current snapshot is always kept, and so is a branch point (one the planner
refuses to delete without `--branches pull`). Each kept snapshot says which rules hold it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from snapledger.domain.errors import BadInput, BranchPointRefused, SnapledgerError
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import Commit, DeleteFile, Plan, Pull
from snapledger.domain.vm import SnapshotRecord

from .cost import CostModel
from .freeing import simulated
from .planners import plan_delete
from .view import LedgerView

PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar())[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}
GREEDY_AT_MOST = 32  # deletions for which "cheapest next" (quadratic in them) is also tried
_DURATION = re.compile(r"(\d+)([smhdwy])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


@dataclass(frozen=True)
class KeepRules:
    last: int = 0
    periods: Mapping[str, int] = field(default_factory=dict)  # "hourly" -> N, ...
    within: timedelta | None = None
    match: str | None = None  # a glob: only these snapshots are candidates

    def __post_init__(self) -> None:
        counts = [self.last, *self.periods.values()]
        if any(n < 0 for n in counts):
            raise BadInput("a keep rule's count can't be negative")
        if not any(counts) and self.within is None:
            raise BadInput("prune needs at least one keep rule (--keep-last, --keep-hourly, --keep-daily, "
                           "--keep-weekly, --keep-monthly, --keep-yearly or --keep-within)")
        unknown = set(self.periods) - set(PERIODS)
        if unknown:
            raise BadInput(f"unknown keep period {sorted(unknown)[0]!r}")


def parse_duration(text: str) -> timedelta:
    """restic's durations: `36h`, `7d`, `2w3d`, `1y` (a year is 365 days)."""
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise BadInput(f"--keep-within {text!r}: expected a duration such as 36h, 7d or 2w3d")
    return timedelta(seconds=sum(int(n) * _UNIT[u] for n, u in parts))


def _time(snap: SnapshotRecord) -> datetime:
    moment = datetime.fromisoformat(snap.created)
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Decision:
    keep: dict[str, tuple[str, ...]]  # snapshot -> the rules that keep it, in rule order
    remove: tuple[str, ...]  # oldest first


def decide(snapshots: Iterable[SnapshotRecord], rules: KeepRules, current: str | None) -> Decision:
    """Which snapshots the rules keep (and why), and which go."""
    ordered = sorted(snapshots, key=lambda s: (_time(s), s.name), reverse=True)  # newest first
    reasons: dict[str, list[str]] = {s.name: [] for s in ordered}
    candidates = [s for s in ordered if rules.match is None or fnmatch.fnmatchcase(s.name, rules.match)]
    for snap in ordered:
        if snap not in candidates:
            reasons[snap.name].append("not matched")
    for snap in candidates[: rules.last]:
        reasons[snap.name].append("last")
    for period, count in rules.periods.items():
        seen: list[tuple[int, ...]] = []
        for snap in candidates:
            key = PERIODS[period](_time(snap))
            if len(seen) < count and key not in seen:
                seen.append(key)
                reasons[snap.name].append(period)
    if rules.within is not None and candidates:
        newest = _time(candidates[0])
        for snap in candidates:
            if newest - _time(snap) <= rules.within:
                reasons[snap.name].append("within")
    if current in reasons:
        reasons[current].append("current")
    keep = {name: tuple(why) for name, why in reasons.items() if why}
    remove = tuple(s.name for s in reversed(ordered) if not reasons[s.name])
    return Decision(keep, remove)


@dataclass(frozen=True)
class PruneStep:
    snapshot: str
    plan: Plan
    bytes_freed: int


def bytes_freed(
    view: LedgerView, vm_name: str, plan: Plan, measured: Mapping[str, ImageFacts] | None = None
) -> int:
    """The bytes on the host of the files a plan deletes: as `measured` on the disks just now
    where given, else as last observed (recorded)."""
    images = view.vms[vm_name].images
    seen = measured or {}
    return sum(
        (seen[s.path] if s.path in seen else images[s.path].facts).size
        for s in plan.steps if isinstance(s, DeleteFile) and s.path in images
    )


@dataclass(frozen=True)
class Route:
    steps: tuple[PruneStep, ...]
    branch_points: tuple[str, ...]  # refused as branch points (kept unless branches are pulled)

    @property
    def bytes_moved(self) -> int:
        return sum(s.plan.bytes_moved for s in self.steps)


def route(
    view: LedgerView, vm_name: str, names: Iterable[str], branches: str,
    cost: CostModel | None = None, dependants: Mapping[str, Sequence[str]] | None = None,
) -> Route:
    """Each deletion in turn, each planned on the state the ones before it leave (applied to a
    copy of the VM with its own methods). A branch point the planner refuses is kept."""
    steps: list[PruneStep] = []
    kept: list[str] = []
    for name in names:
        try:
            chosen = plan_delete(view, vm_name, name, "auto", branches, cost, dependants)
        except BranchPointRefused:
            kept.append(name)
            continue
        steps.append(PruneStep(name, chosen, bytes_freed(view, vm_name, chosen)))
        view = after(view, vm_name, name, chosen)
    return Route(tuple(steps), tuple(kept))


def after(view: LedgerView, vm_name: str, name: str, plan: Plan) -> LedgerView:
    """The view once `plan` ran (simulated on a copy of the VM), with the sizes the merges
    give: what a commit or pull moves into an image is added to it (at most its virtual size;
    an upper bound where the layers overlap), so the next deletion is costed on them."""
    state = simulated(view, vm_name, name, plan)
    vm = state.vms[vm_name]
    grown: dict[str, ImageFacts] = {}
    for step in plan.steps:
        target = step.base if isinstance(step, Commit) else step.image if isinstance(step, Pull) else None
        if target is not None and target in vm.images:
            facts = grown.get(target, vm.images[target].facts)
            grown[target] = replace(facts, allocated=min(facts.virtual_size, facts.allocated + step.bytes))
    vm.observe_images(list(grown.values()))
    return state


def cheapest_route(
    view: LedgerView, vm_name: str, names: tuple[str, ...], branches: str,
    cost: CostModel | None = None, dependants: Mapping[str, Sequence[str]] | None = None,
) -> Route:
    """The order to delete `names` in: oldest first, unless deleting the cheapest next one
    each time moves fewer bytes in all (never more than oldest first, issue 14). Cheapest next
    plans every candidate at every step: only tried for up to GREEDY_AT_MOST deletions (in a
    chain, oldest first was the cheapest order on every layout measured: performance.md §10)."""
    oldest_first = route(view, vm_name, names, branches, cost, dependants)
    left = [s.snapshot for s in oldest_first.steps]
    if len(left) > GREEDY_AT_MOST:
        return oldest_first
    greedy: list[PruneStep] = []
    state = view
    try:
        while left:
            options = []
            for name in left:
                chosen = plan_delete(state, vm_name, name, "auto", branches, cost, dependants)
                options.append((chosen.bytes_moved, names.index(name), name, chosen))
            _, _, name, chosen = min(options, key=lambda o: (o[0], o[1]))
            greedy.append(PruneStep(name, chosen, bytes_freed(state, vm_name, chosen)))
            state = after(state, vm_name, name, chosen)
            left.remove(name)
    except SnapledgerError:  # an order the planner refuses somewhere: oldest first stands
        return oldest_first
    other = Route(tuple(greedy), oldest_first.branch_points)
    return other if other.bytes_moved < oldest_first.bytes_moved else oldest_first
