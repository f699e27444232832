"""The spellings schools' systems produce for the extract's coded columns, read into the contract's values.

Each reader takes a column of trimmed text and returns ``(value, understood)``: the contract's
value (null where the cell is blank, a "not known" marker, or not understood) and a mask that is
true where the cell is blank or understood. A cell that is not understood is blanked by the caller
with a warning; it never costs the pupil their row. Matching ignores case and surrounding spaces.
All readers are vectorised (pyarrow compute), never a loop over pupils.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# Cells that mean "not known" in an optional column: read as blank, no warning.
NOT_KNOWN = ("", "-", "N/A", "NA", "N.A.", "NULL", "UNKNOWN", "NOT KNOWN", "NOT RECORDED", "?")

YES = ("Y", "YES", "TRUE", "T", "1", "1.0")
NO = ("N", "NO", "FALSE", "F", "0", "0.0")
# SEN register codes from the school census (DfE): K = SEN support, E = EHC plan; N = no SEN.
# Older codes still in some systems: S = statement, A/P = School Action (Plus).
SEND_YES = YES + ("K", "E", "S", "A", "P", "SEN", "SEN SUPPORT", "EHC", "EHCP", "EHC PLAN", "STATEMENT")
SEND_NO = NO + ("NONE", "NO SEN")

FEMALE = ("F", "FEMALE", "GIRL", "G", "W", "WOMAN")
MALE = ("M", "MALE", "BOY", "B", "MAN")

# "7", "07", "7.0", "Year 7", "Yr 7", "Y7", "NC Year 7", "R", "Reception", "YR", "Year R", "FS2":
# Reception (Foundation Stage 2) is year 0.
_YEAR = r"^(?:NC\s*)?(?:(?:YEAR|YR|Y)\s*)?(?P<year>[0-9]{1,3}|R|REC|RECEPTION|F2|FS2)(?:\.0+)?$"
_RECEPTION = ("R", "REC", "RECEPTION", "F2", "FS2")
YEAR_GROUPS = (0, 13)  # National Curriculum years, Reception = 0


def _key(values: pa.Array) -> pa.Array:
    """Upper case, inner spaces collapsed: the form the word lists above are written in."""
    return pc.replace_substring_regex(pc.utf8_upper(pc.utf8_trim_whitespace(values)), r"\s+", " ")


def yes_no(values: pa.Array, yes: tuple[str, ...] = YES, no: tuple[str, ...] = NO) -> tuple[pa.Array, pa.Array]:
    """``Y/N``, ``Yes/No``, ``True/False``, ``T/F``, ``1/0`` (any case) as true/false."""
    key = _key(values)
    is_yes = pc.is_in(key, value_set=pa.array(yes))
    is_no = pc.is_in(key, value_set=pa.array(no))
    value = pc.if_else(is_yes, True, pc.if_else(is_no, pa.scalar(False), pa.scalar(None, pa.bool_())))
    return value, pc.or_(pc.or_(is_yes, is_no), pc.is_in(key, value_set=pa.array(NOT_KNOWN)))


def send(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """:func:`yes_no` plus the census SEN codes (``K``, ``E`` -> on the register; ``None`` -> not)."""
    return yes_no(values, SEND_YES, SEND_NO)


def gender(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``F``/``M``, ``Female``/``Male``, ``Girl``/``Boy`` (any case) as ``F`` or ``M``."""
    key = _key(values)
    female = pc.is_in(key, value_set=pa.array(FEMALE))
    male = pc.is_in(key, value_set=pa.array(MALE))
    value = pc.if_else(female, "F", pc.if_else(male, pa.scalar("M"), pa.scalar(None, pa.string())))
    return value, pc.or_(pc.or_(female, male), pc.is_in(key, value_set=pa.array(NOT_KNOWN)))


def year_group(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A National Curriculum year 0 (Reception) to 13 from ``7``, ``Year 7``, ``Y7``, ``R``, ``Reception``, ..."""
    key = _key(values)
    found = pc.struct_field(pc.extract_regex(key, _YEAR), "year")
    digits = pc.if_else(pc.is_in(found, value_set=pa.array(_RECEPTION)), "0", found)
    number = pc.cast(digits, pa.int32())
    low, high = YEAR_GROUPS
    in_range = pc.fill_null(pc.and_(pc.greater_equal(number, low), pc.less_equal(number, high)), False)
    value = pc.if_else(in_range, number, pa.scalar(None, pa.int32()))
    return value, pc.or_(in_range, pc.is_in(key, value_set=pa.array(NOT_KNOWN)))
