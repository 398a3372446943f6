"""The libvirt adapter. Its modules are imported where a libvirt VM is acted on, not by every
command line (a snapshot of a disk-only VM needs none of them)."""

DEFAULT_URI = "qemu:///system"  # libvirt's system connection: where `adopt --libvirt` looks
