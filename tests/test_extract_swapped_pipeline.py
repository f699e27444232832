"""A school file with swapped headers, through a whole `microtrials run` (issue 15, point 1): no raw
pupil id in any published byte, warehouse value or Dagster storage file."""

from __future__ import annotations

import shutil

import duckdb
import pytest

from tests.conftest import EXTRACT_HEADER, SHARED, extract_csv, pupil_rows
from tests.helpers.cli import run_cli

COLUMN = {name: i for i, name in enumerate(EXTRACT_HEADER)}


def swapped_file(urn: str, other: str, ids: list[str]) -> str:
    rows = pupil_rows(len(ids), urn=urn, intervention="Reciprocal reading")
    for row, pupil_id in zip(rows, ids):
        row[COLUMN["pupil_id"]] = pupil_id
    header = list(EXTRACT_HEADER)
    i, j = header.index("pupil_id"), header.index(other)
    header[i], header[j] = header[j], header[i]
    return extract_csv(rows, header)


@pytest.mark.slow
def test_swapped_files_leave_no_raw_id_anywhere(tmp_path):
    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    ids = {
        "intervention": [f"P11131100{i:02d}" for i in range(1, 61)],
        "outcome": [f"Q22242200{i:02d}" for i in range(1, 61)],
        "arm": [f"R33353300{i:02d}" for i in range(1, 61)],
        "gender": [f"S44464400{i:02d}" for i in range(1, 61)],
    }
    for n, (other, pupil_ids) in enumerate(ids.items()):
        (extracts / f"99990{n}.csv").write_text(swapped_file(f"99990{n}", other, pupil_ids), encoding="utf-8")
    done = run_cli(tmp_path, extracts, "swap-test-key-not-secret-3f9b0c7e15d2a648")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "evidence_table.csv").is_file()  # the good schools were published
    everything = [i for pupil_ids in ids.values() for i in pupil_ids]
    leaks = []
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_relative_to(extracts):
            data = path.read_bytes()
            leaks += [(str(path.relative_to(tmp_path)), i) for i in everything if i.encode() in data]
    assert not leaks, leaks[:5]
    assert not [i for i in everything if i in done.stdout + done.stderr]
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        rejected = con.execute(
            "SELECT file_name, reason FROM deliveries WHERE status = 'rejected' ORDER BY file_name"
        ).fetchall()
        tables = [name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        stored = "\n".join(con.execute(f'SELECT * FROM "{t}"').df().astype(str).to_csv() for t in tables)
    finally:
        con.close()
    assert [name for name, _ in rejected] == [f"99990{n}.csv" for n in range(4)]
    assert all("columns may be swapped" in reason for _, reason in rejected)
    assert not [i for i in everything if i in stored]
