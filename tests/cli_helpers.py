"""Running the `snapledger` command as a subprocess on a throwaway SQLite store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "snapledger.adapters.cli"]


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.env = {**os.environ, "SNAPLEDGER_STORE": f"sqlite:///{tmp}/ledger.sqlite"}

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=self.env, timeout=120, check=False,
        )
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        if expect != 0:
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("snapledger: error: "), done.stderr
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def state(self) -> tuple[int, dict[str, tuple[str, int]]]:
        """Events recorded, and every file's checksum and mtime: what must not change. A
        refusal's record (the trail keeps attempts, semantics.md) is not a change."""
        files = {
            p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(self.dir.iterdir())
            if p.name != "ledger.sqlite" and p.is_file()
        }
        changes = [e for e in self.json("log") if e["type"] != "VirtualMachine.OperationRefused"]
        return len(changes), files
