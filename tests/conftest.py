"""Hypothesis profiles: `ci` (the default) and `deep`; choose with HYPOTHESIS_PROFILE."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
