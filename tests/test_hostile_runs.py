"""Issue 21 points 3 and 6 through `microtrials run`: a registry that cannot be read stops the run
(exit 2) and leaves the last publication; a full disk is one line (exit 1); dead runs leave nothing behind."""

from __future__ import annotations

import pytest

from tests.test_cli_safety import home_at, listing, run, some_extracts

REGISTRY = (
    "intervention,outcome_measure,round,start_date,end_date,schools,aliases\r\n"
    "Reciprocal reading,NGRT standardised score,2025 Autumn,2025-09-01,,111601 111602 111603 111604,RR\r\n"
    "Maths mastery,PUMA standardised score,2025 Autumn,2025-09-01,,111604 111605,\r\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le-no-bom-as-binary"])
def test_a_registry_saved_as_utf16_stops_the_run_and_the_last_publication_stays(tmp_path, encoding):
    """Issue 21: trials.csv saved as UTF-16 published an empty evidence table, exit 0."""
    extracts = some_extracts(tmp_path / "extracts")
    (tmp_path / "trials.csv").write_text(REGISTRY, encoding="utf-8")
    home = home_at(tmp_path / "home")
    first = run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home)
    assert first.returncode == 0, first.stderr[-3000:]
    published = listing(tmp_path / "out")
    assert b"Reciprocal reading" in published["evidence_table.csv"]
    data = REGISTRY.encode("utf-16") if encoding == "utf-16" else REGISTRY.encode("utf-16-le")
    (tmp_path / "trials.csv").write_bytes(data)
    second = run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("microtrials run: trials.csv: the file is "), second.stderr
    assert "CSV UTF-8" in lines[0] and "Traceback" not in second.stderr
    assert listing(tmp_path / "out") == published
