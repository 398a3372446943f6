"""The real qemu-img adapter passes snapledger.testing's conformance machine (the byte model,
crashes before and after each storage call, refusals) on real qcow2 files, with a CI-sized
profile: a few short histories (docs/testing.md gives their time)."""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from qemu_helpers import CLUSTER, make_image, raw_bytes, write_clusters

from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.testing import ConformanceMachine

CI = settings(
    max_examples=8, stateful_step_count=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class QemuImgHands(QemuImgStorage):
    """QemuImgStorage with the test's hands (snapledger.testing's ByteStorage): qemu-img makes a
    user's files, qemu-io writes as a guest, qemu-img convert reads every cluster."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="snapledger-kit-")
        super().__init__(allowed_dirs=[self.root])
        self._reads: dict[tuple[object, str], dict[int, int]] = {}

    def make_image(self, path: str, virtual_size: int, clusters: dict[int, int] | None = None,
                   backing: str | None = None, fmt: str = "qcow2") -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        below = self.inspect(backing).format if backing is not None else "qcow2"
        make_image(path, virtual_size, clusters, backing=backing, backing_format=below, fmt=fmt)

    def write(self, path: str, cluster: int, pattern: int) -> None:
        write_clusters(path, {cluster: pattern}, fmt=self.inspect(path).format)

    def read_all(self, path: str) -> dict[int, int]:
        """Through the whole chain; kept until a file under the root changes."""
        key = (self._signature(), path)
        if key not in self._reads:
            data = raw_bytes(path, self.inspect(path).format)
            self._reads[key] = {c: data[c * CLUSTER] for c in range(len(data) // CLUSTER) if data[c * CLUSTER]}
        return dict(self._reads[key])

    def paths(self) -> list[str]:
        return sorted(os.path.join(d, f) for d, _, files in os.walk(self.root) for f in files)

    def _signature(self) -> object:
        return tuple((p, s.st_ino, s.st_mtime_ns, s.st_size)
                     for p in self.paths() for s in [os.stat(p)])


class QemuImgConformance(ConformanceMachine):
    def storage_adapter(self) -> QemuImgHands:
        return QemuImgHands()

    def teardown(self) -> None:
        shutil.rmtree(self.storage.root, ignore_errors=True)


TestQemuImgConformance = QemuImgConformance.TestCase
TestQemuImgConformance.settings = CI
