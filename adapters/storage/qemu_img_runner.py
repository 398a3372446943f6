"""Running qemu-img: one process per call, an argument list (never a shell), a timeout, resource
limits for the calls that parse untrusted image metadata, a merge's progress as it comes, and
every failure as one line (ImageInUse when another process holds an image's lock).

What the calls mean, and the safety rules around them, are qemu_img.py's business.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from snapledger.domain.errors import ImageInUse, StorageError, ToolMissing

Progress = Callable[[float], None]  # told the fraction done of a running merge


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
# qemu's image locking: 'Failed to get "write" lock' / 'Failed to get shared "write" lock',
# followed by 'Is another process using the image [PATH]?'
_LOCKED = re.compile(r'Failed to get (?:shared )?"[^"]*" lock|Is another process using the image')
_LOCKED_IMAGE = re.compile(r"Is another process using the image \[(.*?)\]\?")


def _failure(command: str, path: str, how: str, stderr: str) -> StorageError:
    """The error for a failed qemu-img run: ImageInUse when another process holds a lock."""
    detail = _one_line(stderr) or "no message"
    locked = _LOCKED.search(stderr)
    if locked:
        held = _LOCKED_IMAGE.search(stderr)
        image = held.group(1) if held else path
        return ImageInUse(f"another process still holds {image} (qemu-img {command}: {locked.group(0)})")
    return StorageError(f"qemu-img {command} {path} failed ({how}): {detail}")


def _how(returncode: int) -> str:
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def _limits(cpu_seconds: int, address_space: int) -> Callable[[], None]:
    """What runs in the child between fork and exec (like `prlimit --cpu --as --core`)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class QemuImgRunner:
    """Runs `binary` (qemu-img) with the timeouts and limits it was made with."""

    def __init__(
        self,
        binary: str,
        *,
        timeout: float,
        merge_timeout: float,
        probe_cpu_seconds: int,
        probe_address_space: int,
    ) -> None:
        self.binary = binary
        self.timeout = timeout
        self.merge_timeout = merge_timeout
        self.probe_cpu_seconds = probe_cpu_seconds
        self.probe_address_space = probe_address_space

    def run(
        self,
        command: str,
        path: str,
        args: Sequence[str],
        *,
        limited: bool = False,
        pass_fds: tuple[int, ...] = (),
        long: bool = False,
        succeeds: tuple[int, ...] = (0,),
    ) -> tuple[int, str]:
        """qemu-img's exit code and output; StorageError unless it exits with one of
        `succeeds`. `limited`: under the probe limits (it parses untrusted metadata). `long`:
        the merge timeout, without progress."""
        argv = [self.binary, command, *args]
        timeout = self.merge_timeout if long else self.timeout
        preexec = _limits(self.probe_cpu_seconds, self.probe_address_space) if limited else None
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
                preexec_fn=preexec,
                pass_fds=pass_fds,
            )
        except subprocess.TimeoutExpired:
            raise StorageError(f"qemu-img {command} {path}: timed out after {timeout:g} s") from None
        except OSError as error:
            raise self._missing(error) from None
        if done.returncode not in succeeds:
            raise _failure(command, path, _how(done.returncode), done.stderr)
        return done.returncode, done.stdout

    def merge(self, command: str, path: str, args: Sequence[str], progress: Progress | None) -> None:
        """A long block operation: qemu-img's own progress (`-p`: "(12.50/100%)" lines ended by
        a carriage return) is passed to `progress` as it comes; the merge timeout is kept while
        reading it."""
        argv = [self.binary, command, "-p", *args]
        timeout = self.merge_timeout
        deadline = time.monotonic() + timeout
        try:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as error:
            raise self._missing(error) from None
        assert child.stdout is not None and child.stderr is not None
        pending = b""
        with child:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    child.kill()
                    raise StorageError(f"qemu-img {command} {path}: timed out after {timeout:g} s")
                ready, _, _ = select.select([child.stdout], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(child.stdout.fileno(), 4096)
                if not chunk:
                    break
                pending += chunk
                *done_parts, pending = re.split(rb"[\r\n]", pending)
                for part in done_parts:
                    match = _PROGRESS.search(part)
                    if match and progress is not None:
                        progress(float(match.group(1)) / 100.0)
            stderr = child.stderr.read().decode(errors="replace")
            code = child.wait(max(deadline - time.monotonic(), 1.0))
        if code != 0:
            raise _failure(command, path, _how(code), stderr)

    def check_available(self) -> None:
        """ToolMissing if the binary can't be found as running it would look for it."""
        if shutil.which(self.binary) is None:
            raise self._missing(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))

    def _missing(self, error: OSError) -> ToolMissing:
        return ToolMissing(
            f"can't run {self.binary}: {error.strerror}; snapledger needs qemu-img "
            "(Debian: apt install qemu-utils). Nothing was done"
        )
