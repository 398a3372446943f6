"""A broken environment is one line on stderr, never a traceback, and reading creates nothing.

Every case runs the real command line in a process of its own, with a HOME of its own: malformed
store URLs, stores that aren't there, damaged or foreign ledger files, arguments that aren't
UTF-8, terminal control characters in what users wrote, optional extras that can't be imported,
a ledger the system won't let us write, and a failure nothing foresaw.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from postgres_server import postgres_server
from qemu_helpers import make_image

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage

CLI = [sys.executable, "-m", "snapledger.adapters.cli"]
DISK = "/images/vm.qcow2"  # the simulated ledgers' disk: no command below gets to open it


class Run:
    """One `snapledger` run: exit code, stdout and stderr (bytes, and as text)."""

    def __init__(self, done: subprocess.CompletedProcess[bytes]) -> None:
        self.code = done.returncode
        self.out_bytes, self.err_bytes = done.stdout, done.stderr
        self.out = done.stdout.decode("utf-8", "surrogateescape")
        self.err = done.stderr.decode("utf-8", "surrogateescape")


def snapledger(*args: str | bytes, env: Mapping[str, str | bytes]) -> Run:
    argv = [os.fsencode(a) for a in [*CLI, *args]]
    return Run(subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False))  # type: ignore[arg-type]


def fails(run: Run, code: int, *words: str) -> str:
    """The run failed with `code` and said so in one line naming `words`; that line."""
    assert run.code == code, (run.code, run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapledger: error: "), run.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | bytes]:
    """The environment of a user whose HOME holds nothing yet."""
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SNAPLEDGER_") and k not in ("XDG_DATA_HOME", "PYTHONPATH")}
    return {**clean, "HOME": str(home), "LC_ALL": "C.UTF-8"}


def everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def simulated_ledger(path: Path) -> str:
    """A real SQLite ledger (VM `vm`, snapshot `s1`) recorded over simulated disks; its WAL
    folded into the file, so that damage done to the file is all there is."""
    url = f"sqlite:///{path}"
    storage = SimulatedStorage()
    storage.make_image(DISK, 16 * CLUSTER, {0: 0x01})
    ledger = ledger_service(LedgerApplication(url), storage)
    ledger.adopt("vm", {"vda": DISK})
    ledger.snapshot("vm", "s1")
    ledger.close()
    settle(path)
    return url


def settle(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- 1. store URLs -----------------------------------------------------------------------------

MALFORMED = ["sqlite:////", "sqlite:////dev/null", "sqlite:////tmp/a%00b",
             "postgresql://u@127.0.0.1:99999/db", "postgresql://u@127.0.0.1:http/db", "",
             "sqlite://no-third-slash", "mysql://u@h/db", "sqlite:////tmp/mode=memory.sqlite"]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_store_url_is_one_line_exit_2(url: str, env: dict[str, str | bytes], tmp_path: Path) -> None:
    for command in (["list"], ["show", "vm", "--json"], ["verify"], ["adopt", "vm", "--disk", "vda=/tmp/x.qcow2"]):
        fails(snapledger("--store", url, *command, env=env), 2, "store")
    fails(snapledger("list", env={**env, "SNAPLEDGER_STORE": url or "sqlite:///"}), 2, "store")
    assert everything_under(tmp_path / "home") == []  # --store '' never meant the default store


def test_a_directory_is_no_store(env: dict[str, str | bytes], tmp_path: Path) -> None:
    for command in (["list"], ["recover"]):
        fails(snapledger("--store", f"sqlite:///{tmp_path}", *command, env=env), 2, str(tmp_path), "directory")


def test_a_bad_url_never_shows_its_password(env: dict[str, str | bytes]) -> None:
    line = fails(snapledger("--store", "postgresql://u:s3cret@h:99999/db", "list", env=env), 2)
    assert "s3cret" not in line and "***" in line


# ---- 2. reading creates nothing ------------------------------------------------------------------

READING = [  # (command, exit code on an empty ledger)
    (["list"], 0), (["list", "--json"], 0), (["show", "vm"], 2), (["show", "vm", "--json"], 2),
    (["tree", "vm"], 2), (["log"], 0), (["log", "--json"], 0), (["log", "vm"], 2),
    (["explain", "vm", "/images/x"], 2), (["export"], 0), (["export", "--format", "dot"], 0),
    (["verify"], 0), (["diff", "vm", "0", "1"], 2), (["show", "vm", "--at-event", "1"], 2),
    (["delete", "vm", "s1", "--dry-run"], 2), (["gc", "--dry-run"], 0),
    (["snapshot", "vm", "s1", "--dry-run"], 2),
]


@pytest.mark.parametrize(("where", "variable"), [("default", None), ("xdg", "XDG_DATA_HOME"), ("url", "SNAPLEDGER_STORE")])
def test_reading_a_store_that_is_not_there_creates_nothing(
    where: str, variable: str | None, env: dict[str, str | bytes], tmp_path: Path
) -> None:
    if variable == "XDG_DATA_HOME":
        env[variable] = str(tmp_path / "home" / "data")
    elif variable == "SNAPLEDGER_STORE":
        env[variable] = f"sqlite:///{tmp_path}/home/nonexistent-dir/x.sqlite"
    for command, code in READING:
        done = snapledger(*command, env=env)
        if code:
            fails(done, code)
        else:
            assert done.code == 0 and done.err == "", (command, done.err)
    assert json.loads(snapledger("list", "--json", env=env).out) == []
    assert json.loads(snapledger("log", "--json", env=env).out) == []
    assert "ok" in snapledger("verify", env=env).out
    assert everything_under(tmp_path / "home") == []


def test_replay_creates_no_store(env: dict[str, str | bytes], tmp_path: Path) -> None:
    export = tmp_path / "empty.jsonl"
    export.write_bytes(snapledger("--store", "memory:", "export", env=env).out_bytes)
    assert snapledger("replay", str(export), "list", env=env).code == 0
    assert everything_under(tmp_path / "home") == []


def test_a_writing_command_creates_the_default_store(env: dict[str, str | bytes], tmp_path: Path) -> None:
    disk = make_image(tmp_path / "vm.qcow2", 16 * CLUSTER)
    assert snapledger("adopt", "vm", "--disk", f"vda={disk}", env=env).code == 0
    assert (tmp_path / "home" / ".local" / "share" / "snapledger" / "ledger.sqlite").is_file()
    assert json.loads(snapledger("list", "--json", env=env).out)[0]["vm"] == "vm"


def test_a_writing_command_wants_the_directory_of_a_store_it_is_given(
    env: dict[str, str | bytes], tmp_path: Path
) -> None:
    disk = make_image(tmp_path / "vm.qcow2", 16 * CLUSTER)
    store = tmp_path / "nowhere" / "l.sqlite"
    done = snapledger("--store", f"sqlite:///{store}", "adopt", "vm", "--disk", f"vda={disk}", env=env)
    fails(done, 2, str(store.parent), "does not exist")
    assert not store.parent.exists()


def test_reading_an_empty_postgres_database_creates_no_tables(env: dict[str, str | bytes], tmp_path: Path) -> None:
    import psycopg

    def tables(url: str) -> list[str]:
        with psycopg.connect(url) as con:
            return [r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]

    with postgres_server() as url:
        for command, code in READING:
            assert snapledger("--store", url, *command, env=env).code == code, command
        assert tables(url) == []
        disk = make_image(tmp_path / "vm.qcow2", 16 * CLUSTER)
        assert snapledger("--store", url, "adopt", "vm", "--disk", f"vda={disk}", env=env).code == 0
        assert "snapledger_events" in tables(url)
        assert json.loads(snapledger("--store", url, "list", "--json", env=env).out)[0]["vm"] == "vm"


# ---- 3. a store that is not a ledger, or a damaged one ---------------------------------------------

ON_ANY_STORE = [["list"], ["show", "vm", "--json"], ["show", "vm"], ["log"], ["export"], ["verify"],
                ["snapshot", "vm", "s9"], ["recover"]]


def damaged(kind: str, path: Path) -> str:
    """`path` made into a store of `kind`; what the error line says about it."""
    if kind == "empty":
        path.write_bytes(b"")
        return "empty file"
    if kind == "random":
        path.write_bytes(os.urandom(8192))
        return "not a SQLite database"
    if kind == "foreign":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE invoices (n INTEGER)")
        con.commit()
        con.close()
        return "not a snapledger ledger (its tables: invoices)"
    simulated_ledger(path)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    return "malformed"


@pytest.mark.parametrize("kind", ["empty", "random", "foreign", "truncated"])
def test_a_store_that_is_no_ledger_is_one_line_exit_1_and_stays_as_it_was(
    kind: str, env: dict[str, str | bytes], tmp_path: Path
) -> None:
    store = tmp_path / "l.sqlite"
    says = damaged(kind, store)
    before = digest(store)
    env["SNAPLEDGER_STORE"] = f"sqlite:///{store}"
    for command in ON_ANY_STORE:
        fails(snapledger(*command, env=env), 1, str(store), says)
    assert digest(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "l.sqlite"]


def test_verify_finds_damage_no_other_command_read(env: dict[str, str | bytes], tmp_path: Path) -> None:
    store = tmp_path / "l.sqlite"
    env["SNAPLEDGER_STORE"] = simulated_ledger(store)
    with sqlite3.connect(store) as con:
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
        (root,) = con.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_stored_events_1'"
        ).fetchone()
    with open(store, "r+b") as handle:  # the events' primary key index: listing never reads it
        handle.seek((root - 1) * page_size)
        handle.write(b"\xff" * 64)
    assert snapledger("list", env=env).code == 0
    fails(snapledger("verify", env=env), 1, str(store), "damaged")


def test_a_blank_sqlite_file_reads_as_an_empty_ledger_and_becomes_one(
    env: dict[str, str | bytes], tmp_path: Path
) -> None:
    store = tmp_path / "l.sqlite"
    con = sqlite3.connect(store)
    con.execute("PRAGMA user_version = 1")  # a valid database without a single table
    con.close()
    before = digest(store)
    env["SNAPLEDGER_STORE"] = f"sqlite:///{store}"
    assert json.loads(snapledger("list", "--json", env=env).out) == []
    assert digest(store) == before
    disk = make_image(tmp_path / "vm.qcow2", 16 * CLUSTER)
    assert snapledger("adopt", "vm", "--disk", f"vda={disk}", env=env).code == 0


def without_dac_override() -> list[str]:
    """A prefix that makes root subject to file permissions (as everyone else is)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions can't be tested")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def test_a_ledger_the_system_won_t_let_us_use_is_one_line_exit_1(env: dict[str, str | bytes], tmp_path: Path) -> None:
    store = tmp_path / "l.sqlite"
    env["SNAPLEDGER_STORE"] = f"sqlite:///{store}"
    disk = make_image(tmp_path / "vm.qcow2", 16 * CLUSTER)
    assert snapledger("adopt", "vm", "--disk", f"vda={disk}", env=env).code == 0
    recorded = snapledger("log", "--json", env=env).out
    prefix = without_dac_override()

    def run(*args: str) -> Run:
        argv = [*prefix, *CLI, *args]
        return Run(subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False))  # type: ignore[arg-type]

    store.chmod(0o444)
    for command in (["list"], ["show", "vm"], ["log"], ["verify"]):  # a read-only ledger can be read
        assert run(*command).code == 0, (command, run(*command).err)
    fails(run("snapshot", "vm", "s2"), 1, str(store), "read")
    store.chmod(0o000)
    for command in (["list"], ["verify"], ["snapshot", "vm", "s2"]):
        fails(run(*command), 1, str(store))
    store.chmod(0o644)
    assert snapledger("log", "--json", env=env).out == recorded
    assert not (tmp_path / "vm.s2").exists()  # no overlay made for an operation not recorded


# ---- 4. arguments that aren't UTF-8 ------------------------------------------------------------------

UNDECODABLE = [  # (argv, what the message names)
    ([b"--reason", b"\xff\xfe", b"snapshot", b"vm", b"s2"], "--reason"),
    ([b"snapshot", b"vm", b"s2", b"--reason", b"caf\xe9"], "--reason"),
    ([b"--actor", b"\xc3", b"snapshot", b"vm", b"s2"], "--actor"),
    ([b"snapshot", b"vm", b"s2", b"--actor", b"\x80"], "--actor"),
    ([b"snapshot", b"vm", b"s2", b"--description", b"\xe9t\xe9"], "--description"),
    ([b"snapshot", b"v\xffm", b"s2"], "VM"),
    ([b"snapshot", b"vm", b"s\xff"], "NAME"),
    ([b"show", b"v\xffm", b"--json"], "VM"),
    ([b"adopt", b"other", b"--disk", b"vda=/images/\xff.qcow2"], "--disk"),
    ([b"snapshot", b"vm", b"s2", b"--overlay", b"vda=/images/\xfe"], "--overlay"),
    ([b"swap-disk", b"vm", b"vda", b"/images/\xff"], "PATH"),
    ([b"explain", b"vm", b"/images/\xff"], "PATH"),
    ([b"--store", b"sqlite:////tmp/\xff.sqlite", b"list"], "--store"),
]


@pytest.fixture(scope="module")
def shared_ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One simulated ledger for the tests that must not record anything in it."""
    return simulated_ledger(tmp_path_factory.mktemp("shared") / "l.sqlite")


@pytest.mark.parametrize(("argv", "named"), UNDECODABLE)
def test_an_argument_that_is_not_utf8_is_refused_and_nothing_recorded(
    argv: list[bytes], named: str, env: dict[str, str | bytes], shared_ledger: str
) -> None:
    env["SNAPLEDGER_STORE"] = shared_ledger
    before = snapledger("log", "--json", env=env).out
    fails(snapledger(*argv, env=env), 2, named, "not valid UTF-8")
    assert snapledger("log", "--json", env=env).out == before


def test_an_actor_from_the_environment_that_is_not_utf8_is_named(env: dict[str, str | bytes], shared_ledger: str) -> None:
    env["SNAPLEDGER_STORE"] = shared_ledger
    env["SNAPLEDGER_ACTOR"] = b"\xffops"
    fails(snapledger("snapshot", "vm", "s2", env=env), 2, "SNAPLEDGER_ACTOR", "not valid UTF-8")


# ---- 5. terminal control characters and markup -------------------------------------------------------

STEERING = "\x1b[31mred\x07 \x1b]0;pwned\x07 \r\x08 \u009b2J \u202eevil"


def steers(text: str) -> list[str]:
    """Characters in `text` that steer a terminal (newlines and tabs of the layout are fine)."""
    return [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


def test_what_users_wrote_reaches_the_terminal_escaped_and_json_exact(
    env: dict[str, str | bytes], tmp_path: Path
) -> None:
    env["SNAPLEDGER_STORE"] = f"sqlite:///{tmp_path}/l.sqlite"
    env["COLUMNS"] = "1000"  # table cells on one line each, to look for the escapes in them
    disk = make_image(tmp_path / "vm.qcow2", 16 * CLUSTER)
    assert snapledger("adopt", "vm", "--disk", f"vda={disk}", env=env).code == 0
    reason, actor = f"{STEERING} [bold red]x[/] :smile:", f"ops{STEERING}"
    done = snapledger("--reason", reason, "--actor", actor, "snapshot", "vm", "s1",
                      "--description", STEERING, env=env)
    assert done.code == 0, done.err
    human = {
        "log": snapledger("log", env=env), "show": snapledger("show", "vm", env=env),
        "tree": snapledger("tree", "vm", env=env), "images": snapledger("tree", "vm", "--images", env=env),
        "diff": snapledger("diff", "vm", "0", str(len(json.loads(snapledger("log", "--json", env=env).out))), env=env),
        "explain": snapledger("explain", "vm", disk, env=env),
        "plan": snapledger("delete", "vm", "s1", "--dry-run", env=env),
        "error": snapledger("swap-disk", "vm", "vda", f"/images/{STEERING}", env=env),
    }
    for name, run in human.items():
        assert steers(run.out + run.err) == [], (name, run.out, run.err)
    log = human["log"].out
    assert "\\x1b[31mred\\x07" in log and "[bold red]x[/] :smile:" in log and "ops\\x1b" in log
    assert "\\u202eevil" in log
    fails(human["error"], 2, "\\x1b[31mred")
    entry = json.loads(snapledger("log", "--json", env=env).out)[-1]
    assert (entry["reason"], entry["actor"]) == (reason, actor)
    assert b"\x1b" not in snapledger("log", "--json", env=env).out_bytes  # JSON escapes it


# ---- 6. optional extras that can't be imported ---------------------------------------------------

@pytest.fixture
def broken_extras(tmp_path: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `import libvirt` and `import psycopg` fail."""
    folder = tmp_path / "broken"
    (folder / "psycopg").mkdir(parents=True)
    (folder / "libvirt.py").write_text('raise ImportError("libvirt made unimportable by the test")\n')
    (folder / "psycopg" / "__init__.py").write_text('raise ImportError("psycopg made unimportable by the test")\n')
    return folder


def with_path(env: dict[str, str | bytes], folder: Path) -> dict[str, str | bytes]:
    return {**env, "PYTHONPATH": str(folder)}


@pytest.mark.parametrize("module", ["libvirt", "psycopg"])
def test_the_broken_extras_really_fail_to_import(module: str, broken_extras: Path, env: dict[str, str | bytes]) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          env=with_path(env, broken_extras), check=False)  # type: ignore[arg-type]
    assert done.returncode != 0 and "made unimportable by the test" in done.stderr


def libvirt_ledger(path: Path) -> str:
    """A ledger holding the libvirt domain `web` (adopted through the in-memory libvirt)."""
    from libvirt_fake import FakeLibvirt

    from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor
    from snapledger.adapters.service.adopt_libvirt import adopt_libvirt

    storage = SimulatedStorage()
    storage.make_image(DISK, 16 * CLUSTER, {0: 0x01})
    fake = FakeLibvirt(storage)
    fake.add("web", {"vda": DISK})
    hypervisor = LibvirtHypervisor(lambda _uri: fake, sleep=lambda _s: None)
    url = f"sqlite:///{path}"
    ledger = ledger_service(LedgerApplication(url), storage, hypervisor=hypervisor)
    adopt_libvirt(ledger, hypervisor, "web", fake.uri)
    ledger.close()
    return url


def test_without_libvirt_python_a_libvirt_command_names_the_extra(
    broken_extras: Path, env: dict[str, str | bytes], tmp_path: Path
) -> None:
    env = with_path(env, broken_extras)
    env["SNAPLEDGER_STORE"] = libvirt_ledger(tmp_path / "l.sqlite")
    before = snapledger("log", "--json", env=env).out
    for command in (["adopt", "other", "--libvirt"], ["snapshot", "web", "s1"], ["verify", "web"],
                    ["delete", "web", "nope", "--dry-run"]):
        fails(snapledger(*command, env=env), 1, "pip install 'snapledger[libvirt]'")
    assert snapledger("log", "--json", env=env).out == before
    assert snapledger("show", "web", env=env).code == 0  # reading needs no libvirt


def test_without_psycopg_a_postgres_store_names_the_extra(broken_extras: Path, env: dict[str, str | bytes]) -> None:
    env = with_path(env, broken_extras)
    for command in (["list"], ["show", "vm", "--json"], ["adopt", "vm", "--disk", "vda=/images/x"]):
        fails(snapledger("--store", "postgresql://u@127.0.0.1:5432/db", *command, env=env), 1,
              "pip install 'snapledger[postgres]'")


# ---- 7. the last resort ---------------------------------------------------------------------------

def test_an_unforeseen_failure_is_one_line_and_a_traceback_only_when_asked(
    env: dict[str, str | bytes], tmp_path: Path
) -> None:
    folder = tmp_path / "inject"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "from snapledger.adapters.cli import session\n"
        "def _boom(self):\n"
        "    raise LookupError('injected by the test')\n"
        "session.Context.ledger_app = property(_boom)\n"
    )
    env = with_path(env, folder)
    fails(snapledger("list", env=env), 1, "unexpected failure (LookupError: injected by the test)")
    debug = snapledger("list", env={**env, "SNAPLEDGER_DEBUG": "1"})
    assert debug.code == 1 and "Traceback" in debug.err
    assert debug.err.strip().splitlines()[-1] == "snapledger: error: unexpected failure (LookupError: injected by the test)"
