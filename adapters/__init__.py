"""Everything that touches the world: event store, storage, and (later) qemu-img, libvirt, the CLI."""
