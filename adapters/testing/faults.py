"""Faults around any storage adapter: the process dies, a step fails, another process holds an
image, the tool is missing; so that a user's adapter meets the same trouble the simulation does.

`FaultyPort` wraps the adapter under test and passes every call through, except the k-th
mutating call (create, commit, pull, rebase, delete), which it can cut: die before it (nothing
done), die after it (done, but snapledger never heard: recover must re-run it harmlessly), or
fail. A held image is reported by `sharing` and refuses the merges that would write it, as QEMU's
locks do; a missing tool makes `check_tools` and every step raise ToolMissing.

It also holds the adapter to the port's contract, with an AssertionError that says which call
broke it: every failure is a SnapledgerError (StorageError, ImageInUse, ToolMissing), never an
OSError or a KeyError; a created overlay rests on the backing (and format) it was given, a pull
or rebase leaves the backing it was asked for, and a deleted file is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from snapledger.adapters.service.ports import Dependants, Sharing, StoragePort
from snapledger.adapters.storage.simulated import SimulatedCrash
from snapledger.domain.errors import ImageInUse, SnapledgerError, StorageError, ToolMissing
from snapledger.domain.images import ImageFacts

T = TypeVar("T")

__all__ = ["FaultyPort", "SimulatedCrash"]


class FaultyPort:
    """The storage port of `inner`, with faults injected at chosen calls."""

    def __init__(self, inner: StoragePort) -> None:
        self.inner = inner
        self.held: dict[str, bool] = {}  # path -> held for writing (else only for reading)
        self.tool_missing = False
        self.inject()

    def inject(
        self, *, crash_at: int | None = None, fail_at: int | None = None,
        busy_at: int | None = None, after: bool = False,
    ) -> None:
        """Crash (after the call when `after`) or fail at the k-th mutating call from now, or find
        the image locked at the k-th merge or rebase (1 = the next one); no argument: no faults."""
        self.calls = 0
        self.opens = 0
        self.crash_at, self.fail_at, self.busy_at, self.after = crash_at, fail_at, busy_at, after

    def hold(self, path: str, writing: bool = True) -> None:
        """Another process opens `path` and keeps it open."""
        self.held[self.inner.resolve(path)] = writing

    def release(self, path: str) -> None:
        self.held.pop(self.inner.resolve(path), None)

    # ---- the faults ---------------------------------------------------------------------------

    def _tool(self) -> None:
        if self.tool_missing:
            raise ToolMissing("can't run the storage tool: No such file or directory (injected)")

    def _before(self, opens: tuple[str, ...] = ()) -> None:
        """Count a mutating call and cut it before it starts, if it is the chosen one."""
        self._tool()
        self.calls += 1
        if opens:
            self.opens += 1
            if self.opens == self.busy_at:
                self.busy_at = None
                raise ImageInUse(f"another process holds the image (injected at call {self.calls})")
            for path in opens:
                if self.inner.resolve(path) in self.held:
                    raise ImageInUse(f"another process still holds {path}")
        if self.calls == self.fail_at:
            self.fail_at = None
            raise StorageError(f"injected failure at call {self.calls}")
        if self.calls == self.crash_at and not self.after:
            self.crash_at = None
            raise SimulatedCrash(f"injected crash before call {self.calls}")

    def _after(self) -> None:
        """Die after the chosen call did its work, before snapledger heard it was done."""
        if self.calls == self.crash_at and self.after:
            self.crash_at = None
            raise SimulatedCrash(f"injected crash after call {self.calls}")

    # ---- the port's contract -----------------------------------------------------------------

    @staticmethod
    def _port(call: str, run: Callable[[], T]) -> T:
        """Run one call of the adapter's: a failure that is not a SnapledgerError breaks the port's
        contract (snapledger would take it for a crash of its own, not a failed step)."""
        try:
            return run()
        except SnapledgerError:
            raise
        except Exception as error:
            raise AssertionError(
                f"the storage adapter's {call} raised {type(error).__name__}: {error} (a storage "
                "port raises StorageError, ImageInUse or ToolMissing, from snapledger.domain.errors, "
                "for every failure)"
            ) from error

    def _backed_as_asked(self, call: str, path: str, fmt: str, backing: str | None,
                         backing_format: str | None) -> None:
        facts = self._port(f"inspect({path!r})", lambda: self.inner.inspect(path, fmt))
        got = (facts.backing, facts.backing_format)
        assert got == (backing, backing_format), (
            f"the storage adapter's {call} left {path} backed by {got[0]!r} (format {got[1]!r}), "
            f"not {backing!r} (format {backing_format!r})"
        )

    # ---- the port: reads pass through --------------------------------------------------------

    def exists(self, path: str) -> bool:
        return self._port(f"exists({path!r})", lambda: self.inner.exists(path))

    def check_tools(self) -> None:
        self._tool()
        self._port("check_tools()", self.inner.check_tools)

    def resolve(self, path: str) -> str:
        return self._port(f"resolve({path!r})", lambda: self.inner.resolve(path))

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        self._tool()
        return self._port(f"inspect({path!r})", lambda: self.inner.inspect(path, fmt))

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        self._tool()
        return self._port(f"inspect_chain({path!r})", lambda: self.inner.inspect_chain(path, within, fmt))

    def sharing(self, path: str) -> Sharing:
        seen = self._port(f"sharing({path!r})", lambda: self.inner.sharing(path))
        held = self.held.get(self.inner.resolve(path))
        if held is None:
            return seen
        return Sharing(seen.links, "another process" if held else seen.writer, "another process")

    def scan(self, directories: Iterable[str]) -> Dependants:
        return self._port("scan()", lambda: self.inner.scan(directories))

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        self._tool()
        return self._port(f"reads_same_over({image!r})",
                          lambda: self.inner.reads_same_over(image, fmt, backing, backing_format))

    def remove_unfinished(self, path: str) -> bool:
        return self._port(f"remove_unfinished({path!r})", lambda: self.inner.remove_unfinished(path))

    def repair(self, path: str, *, fmt: str) -> None:
        self._tool()
        self._port(f"repair({path!r})", lambda: self.inner.repair(path, fmt=fmt))

    # ---- the port: changes, each one a call that can be cut ----------------------------------

    def create_overlay(self, path: str, backing: str, backing_format: str, virtual_size: int) -> None:
        self._before()
        call = f"create_overlay({path!r}, {backing!r}, {backing_format!r})"
        self._port(call, lambda: self.inner.create_overlay(path, backing, backing_format, virtual_size))
        self._backed_as_asked(call, path, "qcow2", backing, backing_format)
        self._after()

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        self._before(opens=(top, base))
        self._port(f"commit({top!r}, {base!r})", lambda: self.inner.commit(top, base, fmt=fmt))
        self._after()

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._before(opens=(image,))
        call = f"pull({image!r}, {new_backing!r}, {new_backing_format!r})"
        self._port(call, lambda: self.inner.pull(image, new_backing, new_backing_format, fmt=fmt))
        self._backed_as_asked(call, image, fmt, new_backing, new_backing_format)
        self._after()

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._before(opens=(image,))
        call = f"rebase_unsafe({image!r}, {new_backing!r}, {new_backing_format!r})"
        self._port(call, lambda: self.inner.rebase_unsafe(image, new_backing, new_backing_format, fmt=fmt))
        self._backed_as_asked(call, image, fmt, new_backing, new_backing_format)
        self._after()

    def delete(self, path: str) -> None:
        self._before()
        self._port(f"delete({path!r})", lambda: self.inner.delete(path))
        assert not self._port(f"exists({path!r})", lambda: self.inner.exists(path)), (
            f"the storage adapter's delete({path!r}) returned, but the file is still there"
        )
        self._after()
