"""Hypothesis profiles: `ci` (the default) and `deep`; choose with HYPOTHESIS_PROFILE. And
`postgres`: one private PostgreSQL server for the whole run, for every tier, started by the first
test that asks for it (a run that asks for none starts none)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from postgres_server import postgres_server

# ci and deep differ only in how many histories they try
THOROUGH = {
    "stateful_step_count": 50,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=200, **THOROUGH)  # type: ignore[arg-type]
settings.register_profile("deep", max_examples=10_000, **THOROUGH)  # type: ignore[arg-type]
settings.register_profile(
    "quick",
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The URL of the server's `ledger` database (tests may make databases of their own)."""
    with postgres_server() as url:
        yield url


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (`-n`, `--dist loadgroup`), the tests that drive the one libvirtd (some restart
    it) run one at a time on one worker; the rest spread over the others."""
    for item in items:
        uses_libvirtd = "libvirt_vms" in getattr(item, "fixturenames", ()) or (
            item.path.parent.name == "system" and item.path.name.startswith("test_libvirt")
        )
        if uses_libvirtd:
            item.add_marker(pytest.mark.xdist_group("libvirtd"))
