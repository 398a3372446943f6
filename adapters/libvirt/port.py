"""The libvirt port: the few things snapledger asks of a libvirt connection.

`adapters/libvirt/domains.py` implements it with libvirt-python (the only module that imports
libvirt); tests/libvirt_fake.py implements it in memory for the unit tests. Every failure is
raised as `LibvirtFailure` (a StorageError, one line); an unknown domain as `NoSuchDomain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from snapledger.domain.errors import DomainGone, StorageError


class LibvirtFailure(StorageError):
    """libvirt refused or failed; the message is one line with libvirt's own words."""


class NoSuchDomain(DomainGone):
    """No domain of that name on the connection (exit 2)."""


@dataclass(frozen=True)
class BlockJob:
    """A block job running on one disk of a domain, as libvirt reports it."""

    kind: str  # "commit", "active-commit", "pull", "copy", or "unknown"
    cur: int
    end: int

    @property
    def ready(self) -> bool:
        """An active commit whose data is all copied: it waits for a pivot."""
        return self.end > 0 and self.cur == self.end


class LibvirtPort(Protocol):
    uri: str

    def is_running(self, domain: str) -> bool:
        """NoSuchDomain if there is no such domain."""

    def is_persistent(self, domain: str) -> bool: ...

    def xml(self, domain: str, inactive: bool = False) -> str:
        """The live definition (with backing chains) or, with `inactive`, the persistent one.
        Never with secrets (no VIR_DOMAIN_XML_SECURE)."""

    def running_domains(self) -> list[str]:
        """Names of every running domain on the connection."""

    def snapshot_xmls(self, domain: str) -> list[str]:
        """libvirt's snapshot metadata of the domain, one <domainsnapshot> per snapshot."""

    def delete_snapshot_metadata(self, domain: str, name: str) -> None:
        """Forget libvirt's metadata of one snapshot (files are not touched)."""

    def create_disk_snapshot(self, domain: str, snapshot_xml: str) -> None:
        """One atomic disk-only external snapshot of a running domain onto overlays that exist
        already (DISK_ONLY | ATOMIC | REUSE_EXT | NO_METADATA)."""

    def define(self, xml: str) -> None: ...

    def start(self, domain: str) -> None: ...

    def create(self, xml: str) -> None:
        """Start a transient domain from `xml`."""

    def destroy(self, domain: str) -> None:
        """Stop the domain at once (a transient one is then gone)."""

    def block_commit(
        self, domain: str, disk: str, base: str, top: str | None, bandwidth: int = 0
    ) -> None:
        """Start a commit job: `top` None is an active commit (of the disk's active image).
        `bandwidth`: bytes per second, 0 for no limit (a test knob, see LibvirtHypervisor)."""

    def block_pull(self, domain: str, disk: str, base: str | None, bandwidth: int = 0) -> None:
        """Start a pull (block stream) into the disk's active image of everything above
        `base` (None: the whole chain); `bandwidth` as for block_commit."""

    def block_job(self, domain: str, disk: str) -> BlockJob | None:
        """The disk's running block job, or None."""

    def pivot(self, domain: str, disk: str) -> None:
        """Finish a ready active commit: the domain now writes to the commit's base."""

    def abort_job(self, domain: str, disk: str) -> None: ...


__all__ = ["BlockJob", "LibvirtFailure", "LibvirtPort", "NoSuchDomain"]
