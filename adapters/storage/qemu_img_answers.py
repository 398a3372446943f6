"""What qemu-img says about image files, asked safely: the path checks made before any file is
opened, `qemu-img info` and `map` under resource limits, and their answers turned into
ImageFacts (qemu_img.py's safety rules, the part that reads; the storage operations that change
files are qemu_img.py's). An answer is asked again only if the file changed (settled.py).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from snapledger.adapters.storage.qcow2_layer import read_layer
from snapledger.adapters.storage.qemu_img_runner import QemuImgRunner
from snapledger.adapters.storage.settled import SettledAnswers
from snapledger.domain.errors import StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.names import is_within

FORMATS = frozenset({"qcow2", "raw"})


def _unrecorded_backing_format(image: str, backing: str, found: object) -> StorageError:
    return StorageError(
        f"{image} does not record a usable format for its backing file {backing} ({found!r}); "
        f"qemu-img would probe it: refused (record it with `qemu-img rebase -u -f qcow2 -F FORMAT "
        f"-b {backing} {image}`)"
    )


def recorded_backing_format(overlay: ImageFacts) -> str:
    fmt = overlay.backing_format
    if fmt is None or fmt not in FORMATS:
        raise _unrecorded_backing_format(overlay.path, str(overlay.backing), fmt)
    return fmt


class QemuImgAnswers:
    """The reading half of QemuImgStorage, which sets these attributes."""

    allowed_dirs: tuple[str, ...] | None
    qemu_img: QemuImgRunner
    max_chain: int
    read_in_process: bool
    _answers: SettledAnswers

    def _check_path(self, path: str) -> None:
        """A plain, absolute, normalised local path, inside the allowed directories."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise StorageError(f"{path!r} is not an absolute local file path")
        if ":" in path:
            raise StorageError(f"{path!r} looks like a protocol or pseudo-protocol (contains ':')")
        if "\0" in path or os.path.normpath(path) != path:
            raise StorageError(f"{path!r} is not a normalised file path")
        if self.allowed_dirs is not None:
            real = os.path.realpath(path)
            if not is_within(real, self.allowed_dirs):
                raise StorageError(f"{path} (resolved {real}) is outside the allowed directories")

    def _check_file(self, path: str) -> os.stat_result:
        self._check_path(path)
        try:
            seen = os.stat(path)
        except OSError as error:
            raise StorageError(f"{path}: {error.strerror}") from None
        if stat.S_ISBLK(seen.st_mode) or stat.S_ISCHR(seen.st_mode):
            raise StorageError(f"{path} is a device node: refused")
        if not stat.S_ISREG(seen.st_mode):
            raise StorageError(f"{path} is not a regular file: refused")
        return seen

    def _identity(self, path: str) -> tuple[int, int]:
        seen = self._check_file(path)
        return seen.st_dev, seen.st_ino

    # ---- qemu-img's answers ------------------------------------------------------------

    def _remembered(self, what: str, path: str, fmt: str | None, ask: Callable[[], Any]) -> Any:
        """qemu-img's answer about `path`, asked again only if the file changed (settled.py);
        the file is checked first, every time."""
        looked_at = time.time_ns()  # before the look: see settled.py
        return self._answers.answer((what, path, fmt), self._check_file(path), ask, looked_at)

    def _info(self, path: str, fmt: str | None) -> dict[str, Any]:
        """`qemu-img info` of one file (never opens its backing), under resource limits, opened
        as `fmt` (None: probed, only for a file the ledger does not know yet)."""
        info: dict[str, Any] = self._remembered("info", path, fmt, lambda: self._ask_info(path, fmt))
        return info

    def _ask_info(self, path: str, fmt: str | None) -> dict[str, Any]:
        self._check_file(path)
        if fmt is not None and fmt not in FORMATS:
            raise StorageError(f"{path}: format {fmt!r} is not one of {sorted(FORMATS)}")
        layer = read_layer(path) if fmt == "qcow2" and self.read_in_process else None
        if layer is not None:  # a plain qcow2 layer, read in process: what qemu-img would say
            info: dict[str, Any] = {"format": "qcow2", "virtual-size": layer.virtual_size}
            if layer.backing_name is not None:
                info["backing-filename"] = layer.backing_name
                if layer.backing_format is not None:
                    info["backing-filename-format"] = layer.backing_format
            return info
        args = ["--output=json", "-U"] + (["-f", fmt] if fmt else []) + [path]
        _, out = self.qemu_img.run("info", path, args, limited=True)
        try:
            info = json.loads(out)
        except ValueError:
            raise StorageError(f"qemu-img info {path}: output is not JSON") from None
        if not isinstance(info, dict):
            raise StorageError(f"qemu-img info {path}: unexpected output")
        if info.get("format") not in FORMATS:
            raise StorageError(f"{path} is {info.get('format')!r}: only qcow2 and raw are accepted")
        if not isinstance(info.get("virtual-size"), int):
            raise StorageError(f"qemu-img info {path}: no virtual size")
        specific = info.get("format-specific") or {}
        data = specific.get("data") if isinstance(specific, dict) else None
        if isinstance(data, dict) and data.get("data-file"):
            raise StorageError(f"{path} has an external data file {data['data-file']!r}: refused")
        return info

    def _backing_of(self, path: str, info: dict[str, Any]) -> str | None:
        """The backing file as an absolute path; anything that is not a plain file path is refused."""
        name = info.get("full-backing-filename") or info.get("backing-filename")
        if not name:
            return None
        if not isinstance(name, str):
            raise StorageError(f"qemu-img info {path}: backing file name is not a string")
        if ":" in name:
            raise StorageError(f"{path}: backing {name!r} is not a plain local file path: refused")
        if not name.startswith("/"):
            name = os.path.join(os.path.dirname(path), name)
        name = os.path.normpath(name)
        try:
            self._check_path(name)
        except StorageError as error:
            raise StorageError(f"{path}: backing refused: {error}") from None
        return name

    def _info_chain(self, path: str, fmt: str | None) -> list[tuple[str, dict[str, Any]]]:
        """(path, `qemu-img info`) of each file in the chain, checked before qemu-img opens it."""
        chain = [(path, self._info(path, fmt))]
        seen = {self._identity(path)}
        while (backing := self._backing_of(*chain[-1])) is not None:
            current, info = chain[-1]
            if self._identity(backing) in seen:
                raise StorageError(f"backing chain of {path} loops at {backing}")
            if len(chain) >= self.max_chain:
                raise StorageError(f"backing chain of {path} is longer than {self.max_chain}")
            seen.add(self._identity(backing))
            backing_format = info.get("backing-filename-format")
            if backing_format not in FORMATS:
                raise _unrecorded_backing_format(current, backing, backing_format)
            chain.append((backing, self._info(backing, backing_format)))
        return chain

    def _allocated(self, path: str, fmt: str) -> int:
        """Bytes holding data in this layer alone: the image is opened without its backing."""
        allocated: int = self._remembered("map", path, fmt, lambda: self._ask_allocated(path, fmt))
        return allocated

    def _ask_allocated(self, path: str, fmt: str) -> int:
        # read again, not kept from `info`: the file may have changed in between
        layer = read_layer(path) if fmt == "qcow2" and self.read_in_process else None
        if layer is not None:
            return layer.allocated
        spec: dict[str, Any] = {"driver": fmt, "file": {"driver": "file", "filename": path}}
        if fmt == "qcow2":
            spec["backing"] = None
        _, out = self.qemu_img.run(
            "map", path, ["--output=json", "-U", "json:" + json.dumps(spec)], limited=True
        )
        try:
            extents = json.loads(out)
            return sum(
                int(e["length"]) for e in extents if e.get("data") and e.get("depth", 0) == 0
            )
        except (ValueError, TypeError, KeyError):
            raise StorageError(f"qemu-img map {path}: unexpected output") from None

    def _inspect(self, path: str, fmt: str | None) -> ImageFacts:
        info = self._info(path, fmt)
        backing = self._backing_of(path, info)
        backing_format = info.get("backing-filename-format") if backing is not None else None
        if backing_format is not None and not isinstance(backing_format, str):
            raise StorageError(f"qemu-img info {path}: backing format is not a string")
        allocated = self._allocated(path, info["format"])
        seen = self._check_file(path)
        return ImageFacts(
            path,
            info["format"],
            backing,
            backing_format,
            info["virtual-size"],
            allocated,
            seen.st_dev,
            seen.st_ino,
            seen.st_size,
            seen.st_mtime_ns,
            seen.st_ctime_ns,
        )
