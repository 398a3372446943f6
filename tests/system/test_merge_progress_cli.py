"""A real merge from the command line with stderr not a terminal (cron): plain progress lines on
stderr, and stdout still the JSON answer."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from cli_helpers import Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, write_clusters

SIZE = 16 * CLUSTER


def slow_qemu_img(bin_dir: Path) -> None:
    """`qemu-img` that says some progress for 2.5 s before the real one merges (a merge of a
    few clusters is over long before the one second progress waits for)."""
    real = shutil.which("qemu-img")
    assert real is not None
    script = bin_dir / "qemu-img"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in commit|rebase)\n'
        "  for p in 10 20 30 40 50 60 70 80 90; do printf '    (%s.00/100%%)\\r' $p; sleep 0.28; done;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)


def test_a_long_merge_says_how_it_goes_on_stderr(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    slow_qemu_img(bin_dir)
    cli.env["PATH"] = f"{bin_dir}{os.pathsep}{cli.env['PATH']}"
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "web", "--disk", f"vda={base}")
    cli.run("snapshot", "web", "s1")
    write_clusters(cli.path("base.s1"), {1: 0x21, 2: 0x22})
    cli.run("snapshot", "web", "s2")

    done = cli.run("delete", "web", "s1", "--json")

    answer = json.loads(done.stdout)  # nothing but the answer on stdout
    (step,) = [s for s in answer["steps"] if s["action"] in ("commit", "pull")]
    source, target = (
        (step["top"], step["base"]) if step["action"] == "commit" else (cli.path("base.s1"), step["image"])
    )
    lines = done.stderr.splitlines()
    prefix = f"snapledger: {step['action']} {source} into {target}: "
    assert lines and all(line.startswith(prefix) for line in lines), done.stderr
    said = [line.removeprefix(prefix) for line in lines]
    assert all(re.fullmatch(r"\d+% \(.+ of .+, .+/s, .+ left\)", s) for s in said[:-1]), said
    assert len(said) >= 3 and said[-1].startswith("done, "), said
    assert_reads(cli.json("show", "web")["disks"]["vda"]["active"], {0: 0x10, 1: 0x21, 2: 0x22}, 16)
