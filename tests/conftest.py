"""Shared test set-up: a pupil key so no test depends on the sample key, and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"  # copies of the network's reference set, so a clone tests alone
SHARED = FIXTURES
# A key as strong as the loader demands (128 bits or more); public, so only for tests.
TEST_PUPIL_KEY = "test-pupil-key-not-secret-7c1e9a04b25d36f8"


@pytest.fixture(autouse=True)
def _pupil_key(monkeypatch):
    """Every test runs with a pupil key set, as a deployment would."""
    if "MICROTRIALS_PUPIL_KEY" not in os.environ:
        monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", TEST_PUPIL_KEY)


# ---- school extract files built in tmp_path (used by test_extracts / test_loading) ----------

EXTRACT_HEADER = (
    "school_urn", "pupil_id", "intervention", "outcome_measure", "arm",
    "outcome", "baseline", "fsm", "gender", "year_group", "send",
)


def pupil_rows(n, urn="111601", intervention="Reading", measure="NGRT", start=1, prefix="P"):
    """``n`` valid extract rows (lists in EXTRACT_HEADER order), alternating arms."""
    return [
        [urn, f"{prefix}{urn}-{i}", intervention, measure, ("intervention", "control")[i % 2],
         str(80 + i % 30), str(75 + i % 25), "YN"[i % 2], "FM"[i % 2], str(i % 7), "N"]
        for i in range(start, start + n)
    ]


def extract_csv(rows, header=EXTRACT_HEADER) -> str:
    """CSV text (comma-separated, minimal quoting, \\n line ends) of a header and rows."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


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


# ---- Hypothesis profiles: "ci" (the default: hundreds of delivery sequences), "dev" (fewer, quicker) ----
# Choose with HYPOTHESIS_PROFILE=dev. Tests that set their own max_examples keep them.

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=200, stateful_step_count=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, stateful_step_count=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
