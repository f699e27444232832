"""The spellings schools' systems produce for the extract's coded columns, read into the contract's values.

Each reader takes a column of trimmed text and returns ``(value, understood)``: the contract's
value (null where the cell is blank, a "not known" marker, or not understood) and a mask that is
true where the cell is blank or understood. A cell that is not understood is blanked by the caller
with a warning; it never costs the pupil their row. Matching ignores case, surrounding spaces and
repeated inner spaces. Each distinct spelling is read once (a column holds a handful) and the
answers are spread back over the rows by pyarrow: no loop over pupils.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

# Cells that mean "not known" in an optional column: read as blank, no warning.
NOT_KNOWN = frozenset({"", "-", "N/A", "NA", "N.A.", "NULL", "UNKNOWN", "NOT KNOWN", "NOT RECORDED", "?"})

YES = frozenset({"Y", "YES", "TRUE", "T", "1", "1.0"})
NO = frozenset({"N", "NO", "FALSE", "F", "0", "0.0"})
# SEN register codes from the school census (DfE): K = SEN support, E = EHC plan; N = no SEN.
# Older codes still in some systems: S = statement, A/P = School Action (Plus).
SEND_YES = YES | {"K", "E", "S", "A", "P", "SEN", "SEN SUPPORT", "EHC", "EHCP", "EHC PLAN", "STATEMENT"}
SEND_NO = NO | {"NONE", "NO SEN"}

FEMALE = frozenset({"F", "FEMALE", "GIRL", "G", "W", "WOMAN"})
MALE = frozenset({"M", "MALE", "BOY", "B", "MAN"})

# "7", "07", "7.0", "Year 7", "Yr 7", "Y7", "NC Year 7", "R", "Reception", "YR", "Year R", "FS2":
# Reception (Foundation Stage 2) is year 0.
_YEAR = re.compile(r"(?:NC ?)?(?:(?:YEAR|YR|Y) ?)?([0-9]{1,3}|R|REC|RECEPTION|F2|FS2)(?:\.0+)?")
_RECEPTION = frozenset({"R", "REC", "RECEPTION", "F2", "FS2"})
YEAR_GROUPS = (0, 13)  # National Curriculum years, Reception = 0


def key(text: str) -> str:
    """Upper case, spaces trimmed and collapsed: the form the word lists above are written in."""
    return " ".join(text.upper().split())


def _read_distinct(values: pa.Array, read: Callable[[str], tuple[object, bool]], kind: pa.DataType):
    """``read`` applied to each distinct value, the answers taken back to every row."""
    encoded = pc.dictionary_encode(values)
    answers = [read(key(v)) for v in encoded.dictionary.to_pylist()]
    value = pa.array([a[0] for a in answers], type=kind).take(encoded.indices)
    understood = pa.array([a[1] for a in answers], type=pa.bool_()).take(encoded.indices)
    return value, understood


def _yes_no(yes: frozenset, no: frozenset) -> Callable[[str], tuple[object, bool]]:
    def read(k: str) -> tuple[object, bool]:
        if k in yes:
            return True, True
        if k in no:
            return False, True
        return None, k in NOT_KNOWN

    return read


def yes_no(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``Y/N``, ``Yes/No``, ``True/False``, ``T/F``, ``1/0`` (any case) as true/false."""
    return _read_distinct(values, _yes_no(YES, NO), pa.bool_())


def send(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """:func:`yes_no` plus the census SEN codes (``K``, ``E`` -> on the register; ``None`` -> not)."""
    return _read_distinct(values, _yes_no(SEND_YES, SEND_NO), pa.bool_())


def _gender(k: str) -> tuple[object, bool]:
    if k in FEMALE:
        return "F", True
    if k in MALE:
        return "M", True
    return None, k in NOT_KNOWN


def gender(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``F``/``M``, ``Female``/``Male``, ``Girl``/``Boy`` (any case) as ``F`` or ``M``."""
    return _read_distinct(values, _gender, pa.string())


def _year_group(k: str) -> tuple[object, bool]:
    found = _YEAR.fullmatch(k)
    if found:
        year = 0 if found.group(1) in _RECEPTION else int(found.group(1))
        if YEAR_GROUPS[0] <= year <= YEAR_GROUPS[1]:
            return year, True
    return None, k in NOT_KNOWN


def year_group(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A National Curriculum year 0 (Reception) to 13 from ``7``, ``Year 7``, ``Y7``, ``R``, ``Reception``, ..."""
    return _read_distinct(values, _year_group, pa.int32())
