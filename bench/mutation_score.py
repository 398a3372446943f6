"""Mutation score of the planners, the DAG, the cost model and the VM aggregate (issue 15, item 4).

Run by hand from the checkout's top, in a venv with `pip install -e '.[test]' cosmic-ray`:

    .venv/bin/python bench/mutation_score.py                      # every module, one after another
    .venv/bin/python bench/mutation_score.py projections/cost.py  # one slice
    .venv/bin/python bench/mutation_score.py --report             # the counts and survivors again
    .venv/bin/python bench/mutation_score.py --retest-survivors   # only the survivors, after new tests

cosmic-ray mutates the file in place (the editable install imports the checkout's own folders,
whatever the package-dir mapping) and runs the fast unit tests once per mutant, one at a time. A
session per module lives in `--out` (default `.mutation/`); running again continues the mutants not
yet tested, `--fresh` starts over. Never kill a run with SIGKILL: the mutated file would stay on
disk (`git diff` shows it; `git checkout FILE` puts it back).

Before testing, two kinds of mutants are set aside, counted and never scored, because no test can
tell them apart: those that change only a type annotation (every module has `from __future__
import annotations`, so annotations stay strings no one evaluates; cosmic-ray turns each `X | None`
into eleven other operators), and those that are not Python (cosmic-ray reads `{**d}` as a power).
docs/reliability.md has the score, the survivors and what became of each.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import time
from pathlib import Path

CR = str(Path(sys.executable).parent / "cosmic-ray")

MODULES = [
    "projections/cost.py",
    "projections/planners.py",
    "projections/dag.py",
    "domain/vm.py",
    "domain/vm_steps.py",
    "projections/dag_index.py",
    "domain/vm_records.py",
    "domain/vm_queries.py",
]

# The fast unit tests that reach these modules: about 5 s together, no disk, no qemu-img.
FAST_TESTS = [
    "tests/unit/test_planners.py",
    "tests/unit/test_rfc_diagrams.py",
    "tests/unit/test_retention.py",
    "tests/unit/test_explain.py",
    "tests/unit/test_projection.py",
    "tests/unit/test_frozen_means_frozen.py",
    "tests/unit/test_mutation_kills_planners.py",
    "tests/unit/test_mutation_kills_dag.py",
    "tests/unit/test_mutation_kills_dag_index.py",
    "tests/unit/test_mutation_kills_dag_more.py",
    "tests/unit/test_mutation_kills_vm.py",
    "tests/unit/test_mutation_kills_vm_records.py",
    "tests/unit/test_mutation_kills_vm_queries.py",
    "tests/unit/test_read_back.py",
    "tests/unit/test_read_models.py",
    "tests/unit/test_space.py",
    "tests/unit/test_pictures.py",
    "tests/unit/test_operations.py",
    "tests/unit/test_hosts.py",
    "tests/unit/test_storage_identity.py",
    "tests/unit/test_drift.py",
    "tests/unit/test_recovery.py",
]


def test_command() -> str:
    tests = " ".join(t for t in FAST_TESTS if Path(t).exists())
    return (
        f"{sys.executable} -m pytest -p no:cacheprovider -p no:xdist -o addopts= -x -q "
        f"{tests}"
    )


def config_text(module: str, timeout: float) -> str:
    return (
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{test_command()}"\n\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def _without_annotations(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            node.annotation = None
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.returns = None
        elif isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
    return ast.dump(tree)


def set_aside(session: Path) -> tuple[int, int]:
    """Mark as skipped the mutants that only touch annotations, and those that don't parse."""
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    annotation_only = not_python = 0
    with use_db(str(session), mode=WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            (spec,) = item.mutations
            source = Path(spec.module_path).read_text()
            original = _without_annotations(ast.parse(source))
            operator = cosmic_ray.plugins.get_operator(spec.operator_name)(
                **(spec.operator_args or {})
            )
            mutated = mutate_code(source, operator, spec.occurrence)
            why = None
            try:
                if mutated is not None and _without_annotations(ast.parse(mutated)) == original:
                    why, annotation_only = "annotation only", annotation_only + 1
            except SyntaxError:
                why, not_python = "not Python", not_python + 1
            if why:
                db.set_result(
                    item.job_id,
                    WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED),
                )
    return annotation_only, not_python


def sample(session: Path, size: int, seed: int) -> int:
    """Keep `size` of the mutants still to test, drawn at random; mark the rest not sampled."""
    import random

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), mode=WorkDB.Mode.open) as db:
        pending = sorted(item.job_id for item in db.pending_work_items)
        kept = set(random.Random(seed).sample(pending, min(size, len(pending))))
        for job_id in pending:
            if job_id not in kept:
                db.set_result(
                    job_id, WorkResult(output="not sampled", worker_outcome=WorkerOutcome.SKIPPED)
                )
    return len(kept)


def source_digest(module: str) -> str:
    import hashlib

    return hashlib.sha256(Path(module).read_bytes()).hexdigest()


def check_unchanged(session: Path, module: str) -> None:
    """A session's mutants are positions in the module as it was: testing them on another
    version of it would mutate the wrong code."""
    recorded = session.with_suffix(".source")
    if recorded.exists() and recorded.read_text() != source_digest(module):
        sys.exit(f"{module} changed since its session began: run again with --fresh")


def retest_survivors(session: Path) -> int:
    """Forget the survivors' results, so that the next run tests them again (after new tests)."""
    import sqlite3

    with sqlite3.connect(session) as db:
        return db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount


def report(session: Path, module: str) -> dict[str, int]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    counts = dict.fromkeys(
        ["mutants", "annotation only", "not Python", "not sampled", "killed", "timeout", "survived", "pending"], 0
    )
    survivors = []
    with use_db(str(session), mode=WorkDB.Mode.open) as db:
        counts["mutants"] = db.num_work_items
        counts["pending"] = sum(1 for _ in db.pending_work_items)
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                counts[result.output] += 1
            elif result.output == "timeout":
                counts["timeout"] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                (spec,) = item.mutations
                survivors.append((spec.start_pos[0], spec.operator_name, result.diff))
            else:
                counts["killed"] += 1
    scored = counts["killed"] + counts["timeout"] + counts["survived"]
    score = 100 * (counts["killed"] + counts["timeout"]) / scored if scored else 0.0
    print(f"{module}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; score {score:.1f}%")
    with (session.parent / (session.stem + ".survivors.txt")).open("w") as out:
        for line, operator, diff in sorted(survivors):
            out.write(f"== {module}:{line} {operator}\n{diff}\n")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=MODULES)
    parser.add_argument("--out", type=Path, default=Path(".mutation"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant's tests")
    parser.add_argument("--fresh", action="store_true", help="start every session over")
    parser.add_argument("--report", action="store_true", help="only print the counts")
    parser.add_argument("--sample", type=int, help="test only this many mutants, drawn at random")
    parser.add_argument("--seed", type=int, default=15, help="the draw's seed")
    parser.add_argument("--init-only", action="store_true", help="make the sessions, test none")
    parser.add_argument("--retest-survivors", action="store_true",
                        help="test the survivors again (the module unchanged, the tests new)")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    for folder in ("domain", "projections"):
        shutil.rmtree(Path(folder) / "__pycache__", ignore_errors=True)
    for module in args.modules:
        name = module.replace("/", ".").removesuffix(".py")
        config, session = args.out / f"{name}.toml", args.out / f"{name}.sqlite"
        if not args.report:
            config.write_text(config_text(module, args.timeout))
            if args.fresh or not session.exists():
                session.unlink(missing_ok=True)
                subprocess.run([CR, "init", str(config), str(session)], check=True)
                session.with_suffix(".source").write_text(source_digest(module))
                print(f"{module}: set aside (annotation only, not Python): {set_aside(session)}")
                if args.sample:
                    print(f"{module}: sampled {sample(session, args.sample, args.seed)}")
            check_unchanged(session, module)
            if args.retest_survivors:
                print(f"{module}: {retest_survivors(session)} survivors to test again")
            if args.init_only:
                continue
            started = time.monotonic()
            subprocess.run([CR, "exec", str(config), str(session)], check=True)
            print(f"{module}: {time.monotonic() - started:.0f} s")
        report(session, module)
    return 0


if __name__ == "__main__":
    sys.exit(main())
