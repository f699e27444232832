"""Checks on a whole extract's columns: swapped columns, decimal commas, names that look like identifiers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Swapped columns: a categorical column whose odd values differ on more than this share of its rows
# (with at least SWAP_MIN_DISTINCT of them) looks like a column of pupil identifiers.
SWAP_SHARE = 0.5
SWAP_MIN_DISTINCT = 4

_DECIMAL_COMMA = r"^[+-]?[0-9]+,[0-9]+$"


def shape(values: pa.Array) -> pa.Array:
    """Letters as 'A', digits as '9', other characters as they are: the pattern of an identifier."""
    return pc.replace_substring_regex(pc.replace_substring_regex(values, r"[0-9]", "9"), r"[A-Za-z]", "A")


# Columns checked for identifiers, in the order their reasons are given.
SWAP_CHECKED = (
    "intervention", "outcome_measure", "round", "arm", "gender", "fsm", "send", "year_group",
    "school_urn", "outcome", "baseline",
)


def pupil_id_pattern(pupil_ids: pa.Array) -> str | None:
    """The shape most of the file's distinct pupil_ids share (see :func:`shape`), when it is
    distinctive enough to recognise an identifier by: it has a digit and at least 5 characters."""
    if not len(pupil_ids):
        return None
    shapes = pc.value_counts(shape(pupil_ids))
    top = int(np.argmax(shapes.field("counts").to_numpy()))
    candidate = shapes.field("values")[top].as_py()
    common = shapes.field("counts")[top].as_py() * 2 >= len(pupil_ids)
    return candidate if common and len(candidate) >= 5 and "9" in candidate else None


def swapped_columns(col: dict, empty: dict, odd: dict, pupil_ids: pa.Array) -> str | None:
    """Why a file's columns look swapped with ``pupil_id`` (their values would be stored or published
    as trial names or codes), naming the column and counts, never a value; None when they do not.

    A column's odd values (for the free-text trial names: all its values) look like identifiers when
    (a) at least 4 differ and they differ on more than half its non-blank rows; (b) at least 3
    differ, there are more of them than distinct pupil_ids, and pupil_ids repeat (a small file whose
    ``pupil_id`` column holds codes or trial names); (c) at least 3 equal a pupil_id of the file and
    they are more than half its rows; or (d) at least 3 have the file's pupil_id pattern
    (:func:`pupil_id_pattern`) and they are more than half its rows. A genuine file with 1-3
    interventions or a few odd codes meets none of these.
    """
    pupils = len(pupil_ids)
    ids_repeat = pupils < len(empty["pupil_id"]) - empty["pupil_id"].true_count
    pattern: list[str | None] = []  # worked out only when a column could match it
    for column in SWAP_CHECKED:
        mask = odd[column]
        if not mask.true_count:
            continue
        rows = len(empty[column]) - empty[column].true_count
        counts = pc.value_counts(col[column].filter(mask))
        values, times = counts.field("values"), counts.field("counts")
        many = mask.true_count >= 3 and mask.true_count > SWAP_SHARE * rows

        def weight(where) -> int:
            """Rows whose value is one of the distinct values ``where`` marks."""
            return pc.sum(pc.if_else(where, times, 0)).as_py() or 0

        found = None
        if len(values) >= SWAP_MIN_DISTINCT and len(values) > SWAP_SHARE * rows:
            found = (
                f"the '{column}' column has {len(values)} different values in {rows} rows, "
                "as a column of pupil identifiers would"
            )
        elif len(values) >= 3 and len(values) > pupils and ids_repeat:
            found = (
                f"the '{column}' column has more different values ({len(values)}) than the pupil_id column "
                f"({pupils})"
            )
        elif many and (is_id := pc.is_in(values, value_set=pupil_ids)).true_count and (
            (equal := weight(is_id)) >= 3 and equal > SWAP_SHARE * rows
        ):
            found = f"{equal} of the {rows} '{column}' values are pupil_id values of this file"
        elif many and pc.match_substring_regex(values, "[0-9]").true_count:  # an id pattern has a digit
            shapes = shape(values)
            id_like = weight(pc.and_(pc.match_substring(shapes, "9"), pc.greater_equal(pc.utf8_length(shapes), 5)))
            if id_like >= 3 and id_like > SWAP_SHARE * rows:
                if not pattern:
                    pattern.append(pupil_id_pattern(pupil_ids))
                shaped = weight(pc.equal(shapes, pattern[0])) if pattern[0] else 0
                if shaped >= 3 and shaped > SWAP_SHARE * rows:
                    found = f"{shaped} of the {rows} '{column}' values look like this file's pupil_ids"
        if found:
            return (
                f"columns may be swapped: {found}; check that each header names the column below it "
                f"(especially 'pupil_id' and '{column}') and send the file again"
            )
    return None


# Trial names (intervention, outcome_measure): a cell longer than this is not a name.
NAME_MAX_CHARS = 100
# A rare trial name (on at most this many rows) in a file whose most common name has at least
# NAME_DOMINANT_ROWS rows is set aside when it also holds a date, a run of 4 digits, 'DOB'/'born'
# or an e-mail '@': the shape of a pupil's details typed into the wrong cell.
NAME_RARE_ROWS = 2
NAME_DOMINANT_ROWS = 10
_PERSONAL = r"[0-9]{4}|[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}|(?i:\bdob\b|\bborn\b|d\.o\.b)|@"


def identifier_like_names(values: pa.Array, empty: pa.Array, pupil_ids: pa.Array, rare_rule: bool = True) -> pa.Array:
    """Rows whose trial-name cell looks like a pupil identifier or a pupil's details, not a name.

    A non-blank cell is flagged when it (a) equals a pupil_id of the file, (b) has the file's
    pupil_id shape (:func:`pupil_id_pattern`), (c) is over ``NAME_MAX_CHARS`` characters, or (d) is
    rare -- on at most ``NAME_RARE_ROWS`` rows while the file's most common value has at least
    ``NAME_DOMINANT_ROWS`` -- and holds a date, a run of 4 digits, 'DOB'/'born' or '@'. A genuine
    file naming one or two interventions by their names meets none of these: every name it uses is
    on many rows or holds no digits run or date, and none has the shape of its pupil_ids. The
    tests run on the column's distinct values (a file has a few), then mark their rows.
    ``rare_rule=False`` leaves out (d), for the `round` column, whose genuine values carry years.
    """
    counts = pc.value_counts(values.filter(pc.invert(empty)))
    if not len(counts):
        return pa.repeat(pa.scalar(False), len(values))
    names, times = counts.field("values"), counts.field("counts")
    bad = pc.or_(pc.is_in(names, value_set=pupil_ids), pc.greater(pc.utf8_length(names), NAME_MAX_CHARS))
    shaped = pc.and_(pc.match_substring_regex(names, "[0-9]"), pc.greater_equal(pc.utf8_length(names), 5))
    if shaped.true_count:  # only a name with a digit can have an identifier's shape
        pattern = pupil_id_pattern(pupil_ids)
        if pattern:
            bad = pc.or_(bad, pc.equal(shape(names), pattern))
    if rare_rule and pc.max(times).as_py() >= NAME_DOMINANT_ROWS:
        rare = pc.less_equal(times, NAME_RARE_ROWS)
        bad = pc.or_(bad, pc.and_(rare, pc.match_substring_regex(names, _PERSONAL)))
    if not bad.true_count:
        return pa.repeat(pa.scalar(False), len(values))
    return pc.fill_null(pc.and_(pc.invert(empty), pc.is_in(values, value_set=names.filter(bad))), False)


def decimal_commas(outcome: pa.Array, odd: pa.Array, empty: pa.Array) -> str | None:
    """Why a file whose outcomes are mostly written with a decimal comma (12,5) is refused (loading
    them as 'no post-test' would silently empty the trial); None otherwise."""
    rows = len(outcome) - empty.true_count
    if odd.true_count < 3 or odd.true_count <= SWAP_SHARE * rows:
        return None
    commas = pc.sum(pc.match_substring_regex(outcome.filter(odd), _DECIMAL_COMMA)).as_py() or 0
    if commas >= 3 and commas > SWAP_SHARE * rows:
        return (
            f"{commas} of the {rows} outcome scores are written with a decimal comma (like 12,5); "
            "write them with a decimal point (12.5) and send the file again"
        )
