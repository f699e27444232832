"""Private feedback files: what each school should fix, readable in Excel, never published."""

from __future__ import annotations

import codecs
import csv
import io

import pytest

from microtrials.ingest import feedback
from microtrials.ingest import warehouse
from microtrials.errors import MicrotrialsError
from microtrials.ingest.loading import load_folder
from tests.conftest import EXTRACT_HEADER, pupil_rows

KEY = b"test-key"
COL = {name: i for i, name in enumerate(EXTRACT_HEADER)}


@pytest.fixture
def con(tmp_path):
    connection = warehouse.connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def read_as_excel(path) -> list[dict]:
    data = path.read_bytes()
    assert data.startswith(codecs.BOM_UTF8)  # Excel takes the file as UTF-8 only with the mark
    return list(csv.DictReader(io.StringIO(data[3:].decode("utf-8"), newline="")))


def test_a_school_gets_line_column_value_reason_and_what_to_do(con, write_extract, tmp_path):
    rows = pupil_rows(6, intervention="Lecture Café")
    rows[1][COL["arm"]] = "treat"
    rows[2][COL["outcome"]] = "=1+2"
    rows[3][COL["gender"]] = rows[3][COL["pupil_id"]]  # columns mixed up: an id where gender goes
    rows[4][COL["pupil_id"]] = ""
    folder = write_extract("111601.csv", rows).parent
    write_extract("111602.csv", pupil_rows(3, urn="111602"))  # nothing to fix: no file
    reports = load_folder(con, folder, KEY)
    out = tmp_path / "feedback"
    written = feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, out, tmp_path / "published")
    assert written == [out / "111601" / "111601-what-to-fix.csv"]
    lines = read_as_excel(written[0])
    assert list(lines[0]) == ["Line", "Column", "Value sent", "What is wrong", "What to do"]
    by_line = {(r["Line"], r["Column"]): r for r in lines}
    assert by_line["3", "arm"]["Value sent"] == "treat"
    assert by_line["3", "arm"]["What is wrong"] == "arm must be 'intervention' or 'control', got 'treat'"
    assert by_line["3", "arm"]["What to do"] == "correct the pupil's randomised arm"
    assert by_line["4", "outcome"]["Value sent"] == "'=1+2"  # a formula is shown as text, never run
    assert by_line["5", "gender"]["Value sent"] == feedback.HIDDEN  # equals a pupil_id in the file
    assert by_line["6", "pupil_id"]["Value sent"] == ""
    text = written[0].read_bytes().decode("utf-8-sig")
    assert "P111601-4" not in text  # no pupil identifier, however it got there
    assert not (out / "111602").exists()


def test_trials_not_replaced_are_explained(con, write_extract, tmp_path):
    folder = write_extract("111601.csv", pupil_rows(10)).parent
    load_folder(con, folder, KEY)
    bad = [r[: COL["arm"]] + ["I"] + r[COL["arm"] + 1 :] for r in pupil_rows(10)]
    write_extract("111601.csv", bad)
    reports = load_folder(con, folder, KEY)
    written = feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, tmp_path / "fb")
    lines = read_as_excel(written[0])
    assert len(lines) == 11
    assert lines[-1]["Line"] == "" and lines[-1]["What is wrong"].startswith(
        "Reading / NGRT: held, not applied: it would replace 10 pupils by 0, more than half of them gone, so the "
        "earlier rows stay as they were")
    # a corrected file with nothing to fix removes the old feedback
    write_extract("111601.csv", pupil_rows(10, start=1))
    reports = load_folder(con, folder, KEY)
    assert feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, tmp_path / "fb") == []
    assert not written[0].exists()


def test_warnings_are_included_when_the_table_exists(con, write_extract, tmp_path):
    folder = write_extract("111601.csv", pupil_rows(3)).parent
    reports = load_folder(con, folder, KEY)
    con.execute(
        "CREATE TABLE IF NOT EXISTS load_warnings (delivery_id VARCHAR, source_file VARCHAR, line INTEGER, school_urn VARCHAR,"
        " column_name VARCHAR, rule VARCHAR, reason VARCHAR, intervention VARCHAR, outcome_measure VARCHAR)"
    )
    delivery = con.execute("SELECT delivery_id FROM deliveries").fetchone()[0]
    con.execute(
        "INSERT INTO load_warnings VALUES (?, '111601.csv', 3, '111601', 'year_group', 'odd', "
        "'year_group 6 is unusual for this trial; check it', 'Reading', 'NGRT')",
        [delivery],
    )
    written = feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, tmp_path / "fb")
    [line] = read_as_excel(written[0])
    assert (line["Line"], line["Column"], line["What is wrong"], line["What to do"]) == (
        "3", "year_group", "year_group 6 is unusual for this trial", "check it",
    )


def test_feedback_never_goes_under_the_published_folder(con, tmp_path):
    for folder in (tmp_path / "published", tmp_path / "published" / "feedback", tmp_path):
        with pytest.raises(MicrotrialsError, match="must stay private"):
            feedback.write_feedback(con, [], {}, folder, tmp_path / "published")


def test_unsafe_names_and_missing_urns_stay_inside_the_folder(tmp_path):
    path = feedback.feedback_path(tmp_path, None, "../../etc/pass wd.csv")
    assert path == tmp_path / "unknown-urn" / "pass_wd-what-to-fix.csv"
    assert feedback.feedback_path(tmp_path, "../x", "a.csv").parent == tmp_path / "unknown-urn"


def test_an_unwritable_feedback_folder_is_a_plain_error(con, write_extract, tmp_path):
    rows = pupil_rows(3)
    rows[0][COL["arm"]] = "x"
    folder = write_extract("111601.csv", rows).parent
    reports = load_folder(con, folder, KEY)
    blocked = tmp_path / "fb"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(MicrotrialsError, match=r"could not write the feedback file .* the rows are loaded already"):
        feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, blocked)


def test_value_sent_and_reasons_obey_the_identifier_rule(con, write_extract, tmp_path):
    """Finding 7: no long number, UPN, other pupil's id or name is shown, in the file or the reasons."""
    rows = pupil_rows(12)
    secrets = {
        "fsm": "K801234567890",
        "year_group": "UPN A12345678901B",
        "send": rows[9][COL["pupil_id"]],
        "gender": "Jane Smith",
        "arm": "Jane Smith",
        "outcome": "Jane Smith",
    }
    for i, (column, value) in enumerate(secrets.items()):
        rows[i][COL[column]] = value
    rows[7][COL["gender"]] = "X"  # a short code is still shown, so the school can find it
    folder = write_extract("111601.csv", rows).parent
    reports = load_folder(con, folder, KEY)
    out = tmp_path / "feedback"
    written = feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, out, tmp_path / "pub")
    text = written[0].read_bytes().decode("utf-8-sig")
    stored = "".join(
        con.execute(f"SELECT string_agg(reason, '|') FROM {t}").fetchone()[0] or "" for t in ("quarantine", "load_warnings")
    )
    for value in set(secrets.values()) | {"Jane", "12345678"}:
        assert value not in text and value not in stored
    by_line = {(r["Line"], r["Column"]): r for r in read_as_excel(written[0])}
    assert by_line["2", "fsm"]["Value sent"] == feedback.HIDDEN
    assert by_line["9", "gender"]["Value sent"] == "X"


def test_a_missing_feedback_file_is_written_again_for_an_unchanged_delivery(con, write_extract, tmp_path):
    """Finding 12: a run killed after loading left no feedback file; the next run (file unchanged) writes it."""
    rows = pupil_rows(6)
    rows[1][COL["arm"]] = "treat"
    folder = write_extract("111601.csv", rows).parent
    load_folder(con, folder, KEY)  # loaded, then the run died before the feedback was written
    reports = load_folder(con, folder, KEY)
    assert reports[0].status == "unchanged"
    out = tmp_path / "feedback"
    written = feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, out, tmp_path / "pub")
    assert written == [out / "111601" / "111601-what-to-fix.csv"]
    assert [r["Line"] for r in read_as_excel(written[0])] == ["3"]
    assert feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, out, tmp_path / "pub") == []


def test_feedback_uses_the_cells_the_load_kept_without_reading_files_again(con, write_extract, tmp_path, monkeypatch):
    rows = pupil_rows(6)
    rows[1][COL["arm"]] = "treat"
    rows[3][COL["gender"]] = rows[3][COL["pupil_id"]]
    folder = write_extract("111601.csv", rows).parent
    reports = load_folder(con, folder, KEY)

    def no_second_read(path, lines):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(feedback, "_cells", no_second_read)
    out = tmp_path / "feedback"
    [written] = feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, out)
    by_line = {(r["Line"], r["Column"]): r for r in read_as_excel(written)}
    assert by_line["3", "arm"]["Value sent"] == "treat"
    assert by_line["5", "gender"]["Value sent"] == feedback.HIDDEN  # still hidden: it is a pupil_id
    stored = con.execute("SELECT report_json FROM deliveries").fetchall()[0][0]
    assert "problem_cells" not in stored and rows[3][COL["pupil_id"]] not in stored  # kept in memory only


def write_all(con, folder, tmp_path):
    reports = load_folder(con, folder, KEY)
    out = tmp_path / "feedback"
    return out, feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, out, tmp_path / "pub")


def test_only_the_current_deliverys_file_stays_and_older_ones_are_archived(con, write_extract, tmp_path):
    rows = pupil_rows(6)
    rows[1][COL["arm"]] = "treat"
    first = write_extract("111601-autumn.csv", rows)
    out, written = write_all(con, first.parent, tmp_path)
    assert written == [out / "111601" / "111601-autumn-what-to-fix.csv"]
    first.unlink()
    rows[2][COL["arm"]] = "treat"
    write_extract("111601-v2.csv", rows)
    _, written = write_all(con, first.parent, tmp_path)
    assert sorted(p.name for p in (out / "111601").glob("*.csv")) == ["111601-v2-what-to-fix.csv"]
    assert [p.name for p in (out / "111601" / "archive").iterdir()] == ["111601-autumn-what-to-fix.csv"]
    assert [r["Line"] for r in read_as_excel(written[0])] == ["3", "4"]


def test_a_school_is_asked_to_stop_sending_columns_we_drop(con, write_extract, tmp_path):
    header = EXTRACT_HEADER + ("pupil_name", "dob")
    rows = [row + ["Jane Smith", "2015-01-02"] for row in pupil_rows(4)]
    out, written = write_all(con, write_extract("111601.csv", rows, header=header).parent, tmp_path)
    [row] = read_as_excel(written[0])
    assert row["Column"] == "pupil_name, dob" and row["What to do"].startswith("please stop sending them")
    assert "Jane" not in written[0].read_text(encoding="utf-8-sig")


def test_a_bad_value_that_cannot_identify_anyone_is_shown_and_abs_needs_no_fix(con, write_extract, tmp_path):
    rows = pupil_rows(6)
    rows[0][COL["arm"]] = "Intervention group"
    rows[1][COL["outcome"]] = "9898x"
    rows[2][COL["baseline"]] = "abs"
    rows[3][COL["outcome"]] = "Abs"
    out, written = write_all(con, write_extract("111601.csv", rows).parent, tmp_path)
    by_line = {(r["Line"], r["Column"]): r["Value sent"] for r in read_as_excel(written[0])}
    assert by_line == {("2", "arm"): "Intervention group", ("3", "outcome"): feedback.HIDDEN}
    rows[1][COL["outcome"]] = "9898"  # a number: shown, as the outcome it is (and loaded)
    rows[0][COL["arm"]] = "intervention"
    _, written = write_all(con, write_extract("111601.csv", rows).parent, tmp_path)
    assert written == [] and not (out / "111601" / "111601-what-to-fix.csv").exists()  # abs alone: nothing to fix
    assert con.execute("SELECT count(*), count(outcome), count(baseline) FROM pupils").fetchone() == (6, 5, 5)


def test_a_rejected_file_of_one_school_goes_to_that_school_and_suggests_the_right_names(con, write_extract, tmp_path):
    header = tuple({"arm": "Group", "outcome": "Score after"}.get(c, c) for c in EXTRACT_HEADER)
    out, written = write_all(con, write_extract("111601.csv", pupil_rows(4), header=header).parent, tmp_path)
    assert written == [out / "111601" / "111601-what-to-fix.csv"]
    [row] = read_as_excel(written[0])
    assert row["What is wrong"] == "the file was not loaded: required columns 'arm', 'outcome' are missing from the header row"
    assert row["What to do"].startswith("rename 'Group' to 'arm', 'Score after' to 'outcome' if that is what they hold")


def test_a_rejected_file_of_one_school_is_that_schools_everywhere(con, write_extract, tmp_path):
    """A file rejected whole whose rows all carry one URN is that school's in the load report, the
    published load report ("file 1 from school 111601", not "with no school URN") and the to-do's
    new feedback, as in its feedback folder."""
    from microtrials import summary
    from microtrials.ingest.loading import load_report_frame
    from microtrials.publish.site import public_load_report

    header = tuple("Score after" if c == "outcome" else c for c in EXTRACT_HEADER)
    folder = write_extract("111601_v2.csv", pupil_rows(4), header=header).parent
    reports = load_folder(con, folder, KEY)
    assert [(r.status, r.school_urn) for r in reports] == [("rejected", "111601")]
    frame = load_report_frame(reports)
    published = public_load_report(frame)
    assert list(published[["File", "School URN"]].iloc[0]) == ["file 1 from school 111601", "111601"]
    out = tmp_path / "feedback"
    written = feedback.write_feedback(con, reports, {p.name: p for p in folder.iterdir()}, out, tmp_path / "pub")
    assert written == [out / "111601" / "111601_v2-what-to-fix.csv"]
    warehouse.save_frame(con, "load_report", frame)
    facts = summary.gather(con, None, folder, out, [], demo=False)
    assert facts.new_feedback == [("111601", written[0])]


def test_a_rejection_a_later_good_file_of_the_school_made_good_is_no_longer_a_to_do(con, write_extract, tmp_path):
    """The to-do keeps "rejected 111601_v2.csv ... send the file again" only until the school's next
    file for the trial loads; another school's good file, or an earlier one, does not make it good."""
    from microtrials import summary
    from microtrials.ingest.loading import load_report_frame

    header = tuple("Score after" if c == "outcome" else c for c in EXTRACT_HEADER)
    folder = write_extract("111601.csv", pupil_rows(6)).parent
    write_extract("111601_v2.csv", pupil_rows(6), header=header)
    write_extract("111602.csv", pupil_rows(6, urn="111602"))

    def todo() -> list[str]:
        warehouse.save_frame(con, "load_report", load_report_frame(load_folder(con, folder, KEY)))
        return summary.file_lines(summary.gather(con, None, folder, tmp_path / "fb", [], demo=False))

    assert [line.split(":")[0] for line in todo()[1:]] == ["    rejected 111601_v2.csv"]
    write_extract("111601_v3.csv", pupil_rows(6))
    assert todo() == []
    assert todo() == []  # and on the next run, with every file unchanged
    (tmp_path / "fb" / "111601").mkdir(parents=True)
    (tmp_path / "fb" / "111601" / "111601_v2-what-to-fix.csv").write_text("x")
    assert summary.gather(con, None, folder, tmp_path / "fb", [], demo=False).new_feedback == []  # no news either


def test_a_rejected_file_of_several_schools_goes_to_unknown_urn(con, write_extract, tmp_path):
    header = tuple("Group" if c == "arm" else c for c in EXTRACT_HEADER)
    rows = pupil_rows(2) + pupil_rows(2, urn="111602")
    out, written = write_all(con, write_extract("mixed.csv", rows, header=header).parent, tmp_path)
    assert written == [out / feedback.NO_URN / "mixed-what-to-fix.csv"]
