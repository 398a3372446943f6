"""LibvirtPort with libvirt-python: the only module that imports `libvirt`.

libvirt-python has no type stubs; every call goes through this narrow wrapper, which returns plain
typed values and turns libvirt's errors into one-line `LibvirtFailure`s. Imported only by commands
that act on a libvirt VM (adopt --libvirt, and operations on a VM adopted so), never at start.
"""

from __future__ import annotations

from typing import Any

import libvirt

from snapledger.adapters.libvirt.port import BlockJob, LibvirtFailure, NoSuchDomain

_JOB_KINDS = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: "pull",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: "copy",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: "commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: "active-commit",
}
_SNAPSHOT_FLAGS = (
    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _silence(_ctx: object, _error: object) -> None:
    """libvirt prints every error on stderr by default; ours are raised as exceptions."""


class LibvirtDomains:
    """One connection (opened on first use, reopened after libvirtd restarted)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: Any = None
        libvirt.registerErrorHandler(_silence, None)

    # ---- connection ------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            self._conn = None
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as error:
            raise LibvirtFailure(f"can't connect to libvirt at {self.uri}: {_one_line(error)}") from None
        return self._conn

    def _domain(self, name: str) -> Any:
        try:
            return self._connection().lookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NoSuchDomain(f"no libvirt domain named {name!r} at {self.uri}") from None
            raise LibvirtFailure(f"libvirt: {_one_line(error)}") from None

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # gone since it was looked up
                raise NoSuchDomain(f"libvirt {what}: {_one_line(error)}") from None
            raise LibvirtFailure(f"libvirt {what}: {_one_line(error)}") from None

    # ---- the port --------------------------------------------------------------------

    def is_running(self, domain: str) -> bool:
        dom = self._domain(domain)
        return bool(self._call("isActive", dom.isActive))

    def is_persistent(self, domain: str) -> bool:
        dom = self._domain(domain)
        return bool(self._call("isPersistent", dom.isPersistent))

    def xml(self, domain: str, inactive: bool = False) -> str:
        dom = self._domain(domain)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return str(self._call("XMLDesc", dom.XMLDesc, flags))

    def running_domains(self) -> list[str]:
        conn = self._connection()
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        return sorted(str(d.name()) for d in self._call("listAllDomains", conn.listAllDomains, flags))

    def snapshot_xmls(self, domain: str) -> list[str]:
        dom = self._domain(domain)
        snapshots = self._call("listAllSnapshots", dom.listAllSnapshots, 0)
        return [str(self._call("snapshot XMLDesc", s.getXMLDesc, 0)) for s in snapshots]

    def delete_snapshot_metadata(self, domain: str, name: str) -> None:
        dom = self._domain(domain)
        snap = self._call("snapshotLookupByName", dom.snapshotLookupByName, name, 0)
        self._call("snapshot delete", snap.delete, libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)

    def create_disk_snapshot(self, domain: str, snapshot_xml: str) -> None:
        dom = self._domain(domain)
        self._call("snapshotCreateXML", dom.snapshotCreateXML, snapshot_xml, _SNAPSHOT_FLAGS)

    def define(self, xml: str) -> None:
        self._call("defineXML", self._connection().defineXML, xml)

    def start(self, domain: str) -> None:
        dom = self._domain(domain)
        self._call("start", dom.create)

    def create(self, xml: str) -> None:
        self._call("createXML", self._connection().createXML, xml, 0)

    def destroy(self, domain: str) -> None:
        dom = self._domain(domain)
        self._call("destroy", dom.destroy)

    def block_commit(
        self, domain: str, disk: str, base: str, top: str | None, bandwidth: int = 0
    ) -> None:
        dom = self._domain(domain)
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if top is None else 0
        if bandwidth:
            flags |= libvirt.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES
        self._call("blockCommit", dom.blockCommit, disk, base, top, bandwidth, flags)

    def block_pull(self, domain: str, disk: str, base: str | None, bandwidth: int = 0) -> None:
        dom = self._domain(domain)
        flags = libvirt.VIR_DOMAIN_BLOCK_REBASE_BANDWIDTH_BYTES if bandwidth else 0
        self._call("blockRebase", dom.blockRebase, disk, base, bandwidth, flags)

    def block_job(self, domain: str, disk: str) -> BlockJob | None:
        dom = self._domain(domain)
        info = self._call("blockJobInfo", dom.blockJobInfo, disk, 0)
        if not info:
            return None
        return BlockJob(
            _JOB_KINDS.get(int(info.get("type", 0)), "unknown"),
            int(info.get("cur", 0)),
            int(info.get("end", 0)),
        )

    def pivot(self, domain: str, disk: str) -> None:
        dom = self._domain(domain)
        self._call("pivot", dom.blockJobAbort, disk, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)

    def abort_job(self, domain: str, disk: str) -> None:
        dom = self._domain(domain)
        self._call("blockJobAbort", dom.blockJobAbort, disk, 0)


__all__ = ["LibvirtDomains"]
