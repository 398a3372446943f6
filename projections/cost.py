"""How long storage steps take, so planners can pick the cheaper way."""

from __future__ import annotations

from dataclasses import dataclass

from snapledger.domain.steps import LEDGER_STEPS, Pull, Step

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class CostModel:
    """Seconds per step, from bytes moved and bytes merely scanned.

    A pull is a safe `qemu-img rebase`, which walks the whole virtual size of the image besides
    the bytes it moves. How fast it walks depends on where the new backing is (QEMU 7.2, see
    docs/qemu-img-techniques.md): to no backing at all (a flatten) it reads every cluster through
    the old chain, about 0.07-0.14 s per GiB; onto an image already in the chain it only asks
    which clusters are allocated above it, about 0.002 s per GiB. Commit and convert only pay for
    allocated bytes.
    """

    copy_bytes_per_second: float = 400 * MIB
    flatten_scan_seconds_per_gib: float = 0.14
    in_chain_scan_seconds_per_gib: float = 0.002
    per_step_seconds: float = 0.005  # process start and metadata updates

    def seconds(self, step: Step) -> float:
        if isinstance(step, LEDGER_STEPS):
            return 0.0
        scan = 0.0
        if isinstance(step, Pull):
            rate = (
                self.flatten_scan_seconds_per_gib
                if step.new_backing is None
                else self.in_chain_scan_seconds_per_gib
            )
            scan = step.scanned_bytes / GIB * rate
        return self.per_step_seconds + step.bytes / self.copy_bytes_per_second + scan

    def total(self, steps: tuple[Step, ...] | list[Step]) -> float:
        return sum(self.seconds(s) for s in steps)
