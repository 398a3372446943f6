"""Every relative link in README.md and docs/**/*.md leads to a file inside the repository, and
every source file the pages name is one the repository has.

A link is resolved against the directory of the page that holds it, with its `#anchor` cut off.
Links to the web (http, https, mailto) and links to an anchor of the same page are not checked;
neither is text in code blocks or inline code. A link that leaves the repository fails even when
the file happens to exist beside a checkout (`../shared/...`): a clone would not have it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[[^\]\n]*\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+[\"'(][^)\n]*)?\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*(<[^>\n]*>|\S+)", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def pages(root: Path) -> list[Path]:
    found = [root / "README.md"] if (root / "README.md").exists() else []
    return found + sorted((root / "docs").rglob("*.md"))


def links(text: str) -> list[str]:
    """The link targets of a markdown page, outside code."""
    prose = _CODE.sub("", _FENCE.sub("", text))
    targets = [m.group(1) for m in _INLINE.finditer(prose)]
    targets += [m.group(1) for m in _REFERENCE.finditer(prose)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def broken_links(page: Path, root: Path) -> list[str]:
    """The relative links of `page` that lead to no file of the repository at `root`."""
    wrong = []
    for target in links(page.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue
        resolved = (root / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
        resolved = resolved.resolve()
        if not resolved.is_relative_to(root.resolve()):
            wrong.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            wrong.append(f"{target} (no such file)")
    return wrong


@pytest.mark.parametrize("page", pages(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_of_the_repository(page: Path) -> None:
    assert broken_links(page, ROOT) == []


def test_the_check_catches_links_out_of_the_repository_and_to_missing_files(tmp_path: Path) -> None:
    outside = tmp_path / "shared" / "design"
    outside.mkdir(parents=True)
    (outside / "semantics.md").write_text("# elsewhere\n", encoding="utf-8")
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "cli.md").write_text("# cli\n", encoding="utf-8")
    (repo / "README.md").write_text(
        "[out](../shared/design/semantics.md) [gone](docs/none.md#x) [ok](docs/cli.md#json)\n"
        "[web](https://example.org/a.md) [here](#top) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n```\n[ref]: docs/also-missing.md\n",
        encoding="utf-8",
    )
    assert broken_links(repo / "README.md", repo) == [
        "../shared/design/semantics.md (outside the repository)",
        "docs/none.md#x (no such file)",
        "docs/also-missing.md (no such file)",
    ]


# A Python file named in prose or code: `adapters/cli/entry.py`, `qemu_img.py`, tests/unit/x.py
# (a glob such as `*_commands.py` names no one file).
_PY_FILE = re.compile(r"(?<![A-Za-z0-9_./*-])([A-Za-z0-9_][A-Za-z0-9_/.-]*\.py)\b")


def repository_files(root: Path) -> set[str]:
    """Every file below `root` as a path relative to it, outside hidden and virtualenv folders."""
    found = set()
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if not any(part.startswith(".") for part in relative.parts):
            found.add(relative.as_posix())
    return found


def unknown_files(page: Path, files: set[str]) -> list[str]:
    """The .py files `page` names that the repository does not have: a path must be one of its
    files (or the end of one: `service/commands.py`), a bare name the name of one."""
    names = {f.rpartition("/")[2] for f in files}
    wrong = []
    for named in sorted(set(_PY_FILE.findall(page.read_text(encoding="utf-8")))):
        named = named.removeprefix("./")
        if "/" in named:
            if not any(f == named or f.endswith("/" + named) for f in files):
                wrong.append(named)
        elif named not in names:
            wrong.append(named)
    return wrong


@pytest.mark.parametrize("page", pages(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_source_file_a_page_names_is_in_the_repository(page: Path) -> None:
    """Docs that name modules which moved or were deleted mislead the reader looking for where a
    change goes (architecture.md once named a cache and a test file that did not exist)."""
    assert unknown_files(page, repository_files(ROOT)) == []


def test_the_file_check_catches_moved_and_deleted_modules(tmp_path: Path) -> None:
    (tmp_path / "adapters" / "cli").mkdir(parents=True)
    (tmp_path / "adapters" / "cli" / "entry.py").write_text("", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "`adapters/cli/entry.py`, cli/entry.py and entry.py are here; adapters/cli.py moved,\n"
        "`projection_store.py` is gone, and so is tests/unit/test_projection_sqlite.py.\n",
        encoding="utf-8",
    )
    assert unknown_files(page, repository_files(tmp_path)) == [
        "adapters/cli.py", "projection_store.py", "tests/unit/test_projection_sqlite.py",
    ]
