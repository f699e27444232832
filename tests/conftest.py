"""Shared test set-up: a pupil key so no test depends on the sample key, and paths."""

from __future__ import annotations

import os

import pytest

from tests.helpers.extracts import (  # noqa: F401 - re-exported for older imports
    EXTRACT_HEADER,
    FIXTURES,
    REPO_ROOT,
    SHARED,
    TEST_PUPIL_KEY,
    extract_csv,
    pupil_rows,
)


@pytest.fixture(autouse=True)
def _pupil_key(monkeypatch):
    """Every test runs with a pupil key set, as a deployment would."""
    if "MICROTRIALS_PUPIL_KEY" not in os.environ:
        monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", TEST_PUPIL_KEY)


# ---- school extract files built in tmp_path (used by test_extracts / test_loading) ----------

@pytest.fixture
def write_extract(tmp_path):
    """``write_extract(name, rows_or_text_or_bytes, header=..., folder="extracts") -> Path``."""

    def write(name, content, header=EXTRACT_HEADER, folder="extracts"):
        path = tmp_path / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            text = content if isinstance(content, str) else extract_csv(content, header)
            path.write_bytes(text.encode("utf-8"))
        return path

    return write


# ---- Hypothesis profiles: "ci" (hundreds of delivery sequences; scripts/test.sh, so CI), "dev" (the
# default for a bare `pytest`: fewer, quicker). Choose with HYPOTHESIS_PROFILE. A test that sets its own
# max_examples takes it from tests.helpers.examples.examples(n): n under "ci", a fifth under "dev".

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=200, stateful_step_count=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, stateful_step_count=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
