"""Atomic writes, whole-folder publication, formula neutralising and small-number suppression."""

from __future__ import annotations

import io
import os
import stat
import threading

import numpy as np
import pandas as pd
import pytest

from microtrials.publish import publish
from microtrials.errors import MicrotrialsError
from microtrials.publish.publish import (
    neutralise_formulas,
    publish_folder,
    suppress_small_groups,
    write_atomic,
    write_csv_atomic,
)


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "page.html"
    write_atomic(target, "first")
    write_atomic(target, b"second \xe2\x80\x94 bytes")
    assert target.read_bytes() == "second \u2014 bytes".encode()
    assert [p.name for p in target.parent.iterdir()] == ["page.html"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "evidence_table.csv"
    write_atomic(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(publish.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["evidence_table.csv"]


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+44 1642 000000", "'+44 1642 000000"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("=HYPERLINK(\"http://evil\",\"x\")", "'=HYPERLINK(\"http://evil\",\"x\")"),
        ("Reciprocal reading", "Reciprocal reading"),
        ("a=b", "a=b"),
        ("-0.25", "-0.25"),  # a plain number as text is read as a number, never a formula
        ("", ""),
    ],
)
def test_neutralise_text_cells(cell, expected):
    frame = pd.DataFrame({"text": [cell]})
    assert neutralise_formulas(frame)["text"].iloc[0] == expected


def test_numbers_are_unchanged_and_input_not_modified():
    frame = pd.DataFrame({
        "g": [-0.25, 0.1, np.nan],
        "n": [-3, 4, 5],
        "mixed": [-1.5, "=cmd", None],
        "name": ["=x", "ok", None],
    })
    before = frame.copy()
    out = neutralise_formulas(frame)
    pd.testing.assert_frame_equal(frame, before)
    pd.testing.assert_series_equal(out["g"], frame["g"])
    pd.testing.assert_series_equal(out["n"], frame["n"])
    assert out["mixed"].tolist()[:2] == [-1.5, "'=cmd"] and pd.isna(out["mixed"].iloc[2])
    assert out["name"].tolist()[:2] == ["'=x", "ok"]
    assert out["name"].dtype == frame["name"].dtype


def test_write_csv_atomic_neutralises_and_round_trips(tmp_path):
    frame = pd.DataFrame({"intervention": ["=2+5", "Caf\u00e9 reading"], "effect_size": [-0.12, 0.3]})
    path = tmp_path / "out.csv"
    write_csv_atomic(path, frame)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfintervention,effect_size\n'=2+5,-0.12\n")
    back = pd.read_csv(path, encoding="utf-8-sig")
    assert back["intervention"].tolist() == ["'=2+5", "Caf\u00e9 reading"]
    assert back["effect_size"].tolist() == [-0.12, 0.3]


def test_suppress_small_groups():
    frame = pd.DataFrame({
        "school_urn": ["111201", "111202", "111203", "111204"],
        "n_intervention": [12, 9, 10, 30],
        "n_control": [10, 14, 0, np.nan],
        "g": [0.3, 0.5, np.nan, 0.1],
        "ci_low": [0.0, 0.1, np.nan, -0.2],
    })
    out = suppress_small_groups(frame, ["n_intervention", "n_control"], ["g", "ci_low"])
    assert out["g"].iloc[0] == 0.3 and out["suppressed"].iloc[0] == ""
    assert out[["g", "ci_low"]].iloc[1:].isna().all().all()
    assert out["suppressed"].tolist()[1:] == [
        "fewer than 10 pupils (n_intervention)",
        "fewer than 10 pupils (n_control)",
        "fewer than 10 pupils (n_control)",
    ]
    assert out["n_intervention"].tolist() == frame["n_intervention"].tolist()  # not among value_columns: kept
    assert frame["g"].iloc[1] == 0.5  # input untouched


def test_suppress_small_groups_keeps_whole_numbers_whole():
    frame = pd.DataFrame({"n": [4, 20], "months": [3, -2], "strength": [5, 4]})
    out = suppress_small_groups(frame, ["n"], ["months", "strength"])
    assert out["months"].dtype == "Int64" and pd.isna(out["months"].iloc[0]) and out["months"].iloc[1] == -2
    assert publish.csv_bytes(out).splitlines()[2] == b"20,-2,4,"  # no "-2.0", and no BOM past line 1


def test_suppress_small_groups_threshold_and_existing_reason():
    frame = pd.DataFrame({"n": [4, 6], "value": [1.0, 2.0], "suppressed": ["one arm", ""]})
    out = suppress_small_groups(frame, ["n"], ["value"], threshold=5)
    assert out["suppressed"].tolist() == ["one arm; fewer than 5 pupils (n)", ""]
    assert np.isnan(out["value"].iloc[0]) and out["value"].iloc[1] == 2.0
    with pytest.raises(MicrotrialsError, match="not in the table"):
        suppress_small_groups(frame, ["pupils"], ["value"])


def _listing(folder):
    """The publication's files, without the marker every publication carries (tested on its own)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != publish.MARKER}


def test_publish_folder_replaces_whole_publication(tmp_path):
    out = tmp_path / "published"
    publish_folder(out, {"index.html": b"v1", "old-trial/index.html": b"gone soon", "evidence_table.csv": "a\n1\n"})
    publish_folder(out, {"index.html": b"v2", "new-trial/schools.csv": b"x\n"})
    assert _listing(out) == {"index.html": b"v2", "new-trial/schools.csv": b"x\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published"]  # no staging or old folders left


def test_publish_folder_works_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    out = tmp_path / "published"
    publish_folder(out, {"index.html": b"v1"})
    publish_folder(out, {"index.html": b"v2", "t/index.html": b"t"})
    assert _listing(out) == {"index.html": b"v2", "t/index.html": b"t"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published"]


class _Exploding(dict):
    """A files mapping that fails half way through, like a crash while writing."""

    def items(self):
        yield "index.html", b"new"
        raise RuntimeError("crash while writing")


def test_failed_publication_keeps_last_good_one(tmp_path):
    out = tmp_path / "published"
    publish_folder(out, {"index.html": b"good", "evidence_table.csv": b"a\n1\n"})
    with pytest.raises(RuntimeError, match="crash"):
        publish_folder(out, _Exploding())
    assert _listing(out) == {"index.html": b"good", "evidence_table.csv": b"a\n1\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published"]


@pytest.mark.parametrize("name", ["../escape.html", "/etc/passwd", "a/../../b", "", "a\\b", "a//b"])
def test_publish_folder_refuses_unsafe_names(tmp_path, name):
    out = tmp_path / "published"
    publish_folder(out, {"index.html": b"good"})
    with pytest.raises(MicrotrialsError, match="plain relative path"):
        publish_folder(out, {name: b"x"})
    assert _listing(out) == {"index.html": b"good"}
    assert not (tmp_path / "escape.html").exists()


def _exchange_supported(tmp_path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return publish._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.mark.slow
def test_readers_never_see_a_partial_publication(tmp_path):
    """While publications are swapped repeatedly, every file read is one complete version.

    With renameat2 (Linux) the folder is never missing; with the two-rename fallback a read may
    find it missing for an instant, which is allowed (a "not found", never a partial file).
    """
    exchange = _exchange_supported(tmp_path)
    out = tmp_path / "published"
    body = lambda v: (f"version {v:03d} " * 2000).encode()  # noqa: E731 - big enough to be written in parts
    files = lambda v: {"index.html": body(v), "evidence_table.csv": body(v), "t/index.html": body(v)}  # noqa: E731
    publish_folder(out, files(0))
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader():
        while not stop.is_set():
            for name in ("index.html", "evidence_table.csv", "t/index.html"):
                try:
                    data = (out / name).read_bytes()
                except FileNotFoundError:
                    if exchange:
                        problems.append(f"{name} missing")
                    continue
                reads[0] += 1
                if len(data) != len(body(0)) or data != data[:12] * 2000:
                    problems.append(f"partial {name}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for version in range(1, 40):
        publish_folder(out, files(version))
    stop.set()
    for thread in threads:
        thread.join()
    assert problems == []
    assert reads[0] > 0
    assert (out / "index.html").read_bytes() == body(39)


def test_publish_folder_refuses_a_file_in_the_way(tmp_path):
    out = tmp_path / "published"
    out.write_text("not a folder")
    with pytest.raises(MicrotrialsError, match="not a folder"):
        publish_folder(out, {"index.html": b"x"})
    assert out.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published"]


def test_csv_bytes_has_no_index_and_unix_newlines():
    data = publish.csv_bytes(pd.DataFrame({"a": [1, 2]}))
    assert data == b"\xef\xbb\xbfa\n1\n2\n"
    assert pd.read_csv(io.BytesIO(data), encoding="utf-8-sig")["a"].tolist() == [1, 2]


@pytest.mark.parametrize(("value", "text"), [(1.69e-14, "0.0000000000000169"), (0.25, "0.25"), (3.0, "3"),
                                             (-0.0, "0"), (1e20, "100000000000000000000"), (float("nan"), "")])
def test_plain_number_never_uses_scientific_notation(value, text):
    assert publish.plain_number(value) == text
    if text:
        assert float(text) == value  # full precision kept


def test_publish_folder_refuses_a_symlink(tmp_path):
    real = tmp_path / "real"
    publish_folder(real, {"index.html": b"good"})
    link = tmp_path / "published"
    link.symlink_to(real)
    with pytest.raises(MicrotrialsError, match="symbolic link"):
        publish_folder(link, {"index.html": b"new"})
    assert (real / "index.html").read_bytes() == b"good" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published", "real"]


def test_identifier_findings_allow_an_empty_template_but_not_data():
    template = publish.csv_bytes(pd.DataFrame(columns=["school_urn", "pupil_id", "arm"]))
    assert publish.identifier_findings({"send/t-template.csv": template}, set()) == []
    leaked = publish.csv_bytes(pd.DataFrame({"school_urn": ["111201"], "pupil_id": ["P1"]}))
    assert publish.identifier_findings({"x.csv": leaked}, set()) == [("x.csv", "column pupil_id")]


def test_publish_folder_marks_its_publication(tmp_path):
    out = publish_folder(tmp_path / "published", {"index.html": b"v1"})
    assert (out / publish.MARKER).read_text() == publish.MARKER_TEXT


@pytest.mark.parametrize("content", [
    {"school-1.csv": b"pupil_id,arm\n", "school-2.csv": b"pupil_id,arm\n"},  # --out = the extracts folder
    {"extracts/school-1.csv": b"pupil_id,arm\n"},  # --out = a folder above the extracts
    {"warehouse.duckdb": b"DUCK", "index.html": b"x", "evidence_table.csv": b"a\n"},  # --db inside --out
    {"home/dagster.yaml": b"storage:\n"},  # DAGSTER_HOME inside --out
])
def test_publish_folder_never_replaces_a_folder_that_is_not_a_publication(tmp_path, content):
    out = tmp_path / "data"
    for name, data in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    with pytest.raises(MicrotrialsError, match="not a microtrials publication"):
        publish_folder(out, {"index.html": b"x", "evidence_table.csv": b"a\n1\n"})
    assert _listing(out) == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging folder left


def test_publish_folder_replaces_an_empty_folder_and_an_unmarked_earlier_publication(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    publish_folder(empty, {"index.html": b"new"})
    assert _listing(empty) == {"index.html": b"new"}
    # A publication written before markers existed: only publication files (html, csv) in it.
    earlier = tmp_path / "earlier"
    (earlier / "trial").mkdir(parents=True)
    for name in ("index.html", "evidence_table.csv", "trial/index.html", "trial/schools.csv"):
        (earlier / name).write_bytes(b"old")
    publish_folder(earlier, {"index.html": b"new", "evidence_table.csv": b"a\n1\n"})
    assert _listing(earlier) == {"index.html": b"new", "evidence_table.csv": b"a\n1\n"}
