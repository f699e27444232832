"""School extract rows and CSV text for tests, and the paths and pupil key every test uses."""

from __future__ import annotations

import csv
import io
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"  # copies of the network's reference set, so a clone tests alone
SHARED = FIXTURES
# A key as strong as the loader demands (128 bits or more); public, so only for tests.
TEST_PUPIL_KEY = "test-pupil-key-not-secret-7c1e9a04b25d36f8"

EXTRACT_HEADER = (
    "school_urn", "pupil_id", "intervention", "outcome_measure", "arm",
    "outcome", "baseline", "fsm", "gender", "year_group", "send",
)


def pupil_rows(n: int, urn: str = "111601", intervention: str = "Reading", measure: str = "NGRT", start: int = 1,
               prefix: str = "P") -> list[list[str]]:
    """``n`` valid extract rows (lists in EXTRACT_HEADER order), alternating arms."""
    return [
        [urn, f"{prefix}{urn}-{i}", intervention, measure, ("intervention", "control")[i % 2],
         str(80 + i % 30), str(75 + i % 25), "YN"[i % 2], "FM"[i % 2], str(i % 7), "N"]
        for i in range(start, start + n)
    ]


def extract_csv(rows: list[list[str]], header: tuple[str, ...] = EXTRACT_HEADER) -> str:
    """CSV text (comma-separated, minimal quoting, \\n line ends) of a header and rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
