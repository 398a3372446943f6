"""What people read, at 80 columns on a terminal, against golden files a person has read
(tests/golden/*.txt). One story on real qcow2 files; each human output of it is run in a
pseudo-terminal 80 columns wide, its times, ids and directory put in a fixed form.

To write the golden files again after a deliberate change, run
`SNAPLEDGER_GOLDEN=write python -m pytest tests/system/test_golden_output.py`, then read every
changed file (`git diff tests/golden`) before committing it: that reading is the test.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CLI
from qemu_helpers import CLUSTER, make_image, write_clusters

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
# A fixed directory: paths are part of what people read, and their length shapes the tables.
STORY = Path("/tmp/snapledger-golden")
COLUMNS = 80
pytestmark = pytest.mark.xdist_group("golden-story")  # one fixed directory: one worker

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}")
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)")
OPERATION = re.compile(r"\b[0-9a-f]{32}\b")


def on_terminal(args: list[str], env: dict[str, str]) -> str:
    """What `snapledger ARGS` shows on a terminal COLUMNS wide (stdout and stderr together)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 60, COLUMNS, 0, 0))
    done = subprocess.Popen([*CLI, *args], stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        shown += chunk
    done.wait(timeout=120)
    os.close(leader)
    return shown.decode().replace("\r\n", "\n")


def fixed(text: str) -> str:
    """Times, operation ids and trailing blanks in a fixed form; nothing else changed."""
    text = ANSI.sub("", text)
    text = LOCAL_TIME.sub("2026-12-24 18:00:00 +0000", text)
    text = ISO_TIME.sub("2026-12-24T18:00:00+00:00", text)
    text = OPERATION.sub("0" * 32, text)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


@pytest.fixture(scope="module")
def story() -> Iterator[dict[str, str]]:
    """The RFC's kind of story: two snapshots, a revert (an alternate history), a refusal."""
    shutil.rmtree(STORY, ignore_errors=True)
    STORY.mkdir(parents=True)
    env = {
        **os.environ, "SNAPLEDGER_STORE": f"sqlite:///{STORY}/ledger.sqlite", "SNAPLEDGER_ACTOR": "alice",
        "SNAPLEDGER_HOST": "hv1", "TZ": "UTC", "NO_COLOR": "1", "TERM": "xterm", "PAGER": "cat",
        "COLUMNS": str(COLUMNS),
    }

    def run(*args: str, expect: int = 0) -> None:
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert done.returncode == expect, (args, done.stdout, done.stderr)

    base = make_image(str(STORY / "web.qcow2"), 64 * CLUSTER, {0: 0x10, 1: 0x11})
    run("adopt", "web", "--disk", f"vda={base}", "--reason", "ticket 4711")
    run("snapshot", "web", "s0")
    write_clusters(str(STORY / "web.s0"), {1: 0x12})
    run("snapshot", "web", "s1", "--description", "before the upgrade")
    write_clusters(str(STORY / "web.s1"), {2: 0x21, 3: 0x22, 4: 0x23})
    run("snapshot", "web", "s2")
    write_clusters(str(STORY / "web.s2"), {5: 0x31})
    run("revert", "web", "s1", "--reason", "upgrade failed")
    write_clusters(str(STORY / "web.s1-1"), {6: 0x41})
    run("delete", "web", "s1", expect=3)  # a branch point: refused, and kept in the trail
    yield env
    shutil.rmtree(STORY, ignore_errors=True)


SCREENS = {
    "show": ["show", "web"],
    "show-snapshot": ["show", "web", "s1"],
    "tree": ["tree", "web"],
    "tree-images": ["tree", "web", "--images"],
    "explain": ["explain", "web", str(STORY / "web.s1")],
    "delete-dry-run": ["delete", "web", "s2", "--dry-run"],
    "delete-branch-point-dry-run": ["delete", "web", "s1", "--branches", "pull", "--dry-run"],
    "prune-dry-run": ["prune", "web", "--keep-last", "1", "--dry-run"],
    "usage": ["usage", "web"],
    "log": ["log"],
    "log-events": ["log", "--events", "-n", "8"],
    "diff": ["diff", "web", "s1", "s2"],
    "list": ["list"],
    "refused": ["delete", "web", "s1"],
}


@pytest.mark.parametrize("screen", sorted(SCREENS))
def test_what_people_read_fits_80_columns_and_matches_its_golden_file(story: dict[str, str], screen: str) -> None:
    shown = fixed(on_terminal(SCREENS[screen], story))
    # an error stays one line, whatever its length: scripts read it (cli.md)
    too_wide = [line for line in shown.splitlines() if len(line) > COLUMNS and not line.startswith("snapledger: error:")]
    assert not too_wide, f"{screen}: wider than {COLUMNS} columns:\n" + "\n".join(too_wide)
    assert "Traceback" not in shown and "((" not in shown and "{'" not in shown  # no reprs
    golden = GOLDEN / f"{screen}.txt"
    if os.environ.get("SNAPLEDGER_GOLDEN") == "write":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(shown)
    assert golden.exists(), f"no golden file for {screen}: write them (see the module's docstring)"
    assert shown == golden.read_text(), f"{screen} differs from {golden}"
