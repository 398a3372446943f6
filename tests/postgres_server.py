"""A private, throwaway PostgreSQL server for the tests (Debian's postgresql package).

Started with the server binaries directly, as the `postgres` user when run as root, on a port of
its own and a socket in the data directory, so nothing the host runs is touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"PostgreSQL's {name} is needed (.ci/setup installs the postgresql package)"
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_server(fsync: bool = False, settings: str = "") -> Iterator[tuple[str, Path]]:
    """A throwaway server on a port of its own: its base URL (no database) and data directory.
    fsync off for the tests; on for a benchmark, whose commits must wait for their WAL as a
    real ledger's do. `settings`: more `-c name=value` for the server."""
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="snapledger-pg-"))
    data = root / "pgdata"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run([*as_user, server_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], **run)  # type: ignore[call-overload]
    port = _free_port()
    log = data / "server.log"
    options = f"-p {port} -k {data} -h 127.0.0.1 -c fsync={'on' if fsync else 'off'} {settings}"
    subprocess.run(
        [*as_user, server_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start"],
        **run,  # type: ignore[call-overload]
    )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            [server_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True, check=False
        ).returncode != 0:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}", data
    finally:
        subprocess.run(
            [*as_user, server_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, check=False, timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a store URL for a fresh database on a server that stops afterwards."""
    with private_server() as (base, _):
        port = base.rsplit(":", 1)[1]
        subprocess.run(
            [server_bin("createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "ledger"],
            check=True, capture_output=True, timeout=120,
        )
        yield f"{base}/ledger"
