"""Real libvirt domains for the system tests: tiny, OS-less, under TCG.

`libvirt_vms` (a pytest fixture) gives a `Domains` that defines or creates uniquely named test
domains (64 MiB, one vCPU, `machine='pc'`, no OS: SeaBIOS finds nothing to boot and idles) with
one or more virtio qcow2 disks, and destroys and undefines every one of them afterwards, with
their libvirt snapshot metadata. Guest writes are stood in for by HMP `qemu-io` on the disk's
qdev path (`/machine/peripheral/virtio-disk0/virtio-backend`; libvirt 9.0 names the first virtio
disk `virtio-disk0`), each followed by a flush; `reads` checks what the running disk reads the
same way (QEMU prints qemu-io's report in the domain's log).

libvirtd is needed: .ci/setup installs and starts it. The tests never skip without it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import libvirt
import pytest

URI = "qemu:///system"
TIMEOUT = 60
LIBVIRTD_LOCK = "/var/tmp/snapledger-tests-libvirtd.lock"


def _virsh(*args: str) -> str:
    done = subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def domain_xml(name: str, disks: Mapping[str, str], extra: str = "") -> str:
    devices = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{path}'/>
      <target dev='{target}' bus='virtio'/>
    </disk>"""
        for target, path in sorted(disks.items())
    )
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}{extra}
  </devices>
</domain>
"""


def _quiet(_ctx: object, _error: object) -> None:
    """libvirt prints each error on stderr; the tests see them as exceptions."""


class Domains:
    def __init__(self, directory: Path) -> None:
        libvirt.registerErrorHandler(_quiet, None)
        self.dir = directory
        self.conn = libvirt.open(URI)
        self.names: list[str] = []

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def new(self, disks: Mapping[str, str], *, persistent: bool = True, start: bool = True,
            name: str | None = None, extra: str = "") -> str:
        """A domain on these qcow2 files (target -> path), with `extra` devices (XML);
        persistent or transient."""
        name = name or f"sltest-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        xml = domain_xml(name, disks, extra)
        if persistent:
            self.conn.defineXML(xml)
            if start:
                self.conn.lookupByName(name).create()
        else:
            assert start, "a transient domain exists only while it runs"
            self.conn.createXML(xml, 0)
        return name

    def domain(self, name: str) -> libvirt.virDomain:
        return self.conn.lookupByName(name)

    def reconnect(self) -> None:
        """A new connection: the old one died with libvirtd (tests that restart it)."""
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass
        self.conn = libvirt.open(URI)

    def running(self, name: str) -> bool:
        try:
            return bool(self.domain(name).isActive())
        except libvirt.libvirtError:
            return False

    def sources(self, name: str, inactive: bool = False) -> dict[str, list[str]]:
        """Each disk's chain as libvirt reads it, active first."""
        from snapledger.adapters.libvirt.xml import domain_disks

        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        xml = self.domain(name).XMLDesc(flags)
        return {d.target: [d.source or "", *d.chain] for d in domain_disks(xml)}

    def write(self, name: str, pattern: int, offset: int, length: int = 64 * 1024,
              device: str = "virtio-disk0") -> None:
        """What a guest writing to that disk would do: write, then flush."""
        qdev = f"/machine/peripheral/{device}/virtio-backend"
        for command in (f"write -P {pattern:#x} {offset} {length}", "flush"):
            out = _virsh("qemu-monitor-command", "--hmp", name, f'qemu-io -d {qdev} "{command}"')
            if "error" in out.lower() or "failed" in out.lower():
                raise AssertionError(f"qemu-io {command} on {name}: {out}")

    def reads(self, name: str, pattern: int, offset: int, length: int,
              device: str = "virtio-disk0") -> bool:
        """Whether the running disk reads `pattern` there, as the guest would: HMP qemu-io, whose
        report QEMU prints on its stdout, the domain's log (virtlogd), not on the monitor."""
        qdev = f"/machine/peripheral/{device}/virtio-backend"
        command = f"read -P {pattern:#x} {offset} {length}"
        log = Path("/var/log/libvirt/qemu") / f"{name}.log"
        start = log.stat().st_size
        _virsh("qemu-monitor-command", "--hmp", name, f'qemu-io -d {qdev} "{command}"')
        done = f"read {length}/{length} bytes at offset {offset}\n"
        deadline = time.monotonic() + TIMEOUT
        while True:
            with log.open("rb") as f:
                f.seek(start)
                out = f.read().decode(errors="replace")
            if done in out:
                return "Pattern verification failed" not in out.split(done)[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"qemu-io {command} on {name}: no report in {log}: {out}")
            time.sleep(0.02)

    def stop(self, name: str) -> None:
        if self.running(name):
            self.domain(name).destroy()

    def cleanup(self) -> None:
        for name in self.names:
            try:
                dom = self.domain(name)
            except libvirt.libvirtError:
                continue
            try:
                persistent = dom.isPersistent()
                if dom.isActive():
                    dom.destroy()  # a transient domain is gone now
                if persistent:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            except libvirt.libvirtError:
                pass
        self.conn.close()


@pytest.fixture
def libvirt_vms() -> Iterator[Domains]:
    # QEMU runs as libvirt-qemu: the images' directory must be reachable by it, which pytest's
    # tmp_path (0700 under /tmp/pytest-of-root) is not.
    # One test at a time drives the one libvirtd (some restart it), whichever worker runs it:
    # xdist's group sends them to one worker, and this lock holds if anything else runs one.
    lock = open(LIBVIRTD_LOCK, "a+")  # noqa: SIM115 (closed below)
    fcntl.flock(lock, fcntl.LOCK_EX)
    directory = Path(tempfile.mkdtemp(prefix="snapledger-libvirt-", dir="/var/tmp"))
    os.chmod(directory, 0o755)
    domains = Domains(directory)
    try:
        yield domains
    finally:
        domains.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
        lock.close()  # and with it the lock
