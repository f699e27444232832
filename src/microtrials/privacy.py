"""The pupil key: schools' pupil_ids are stored only as an HMAC-SHA256 keyed by MICROTRIALS_PUPIL_KEY."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa

from microtrials.errors import MicrotrialsError

KEY_VARIABLE = "MICROTRIALS_PUPIL_KEY"

# Documented, public, and therefore no secret: used only for the bundled sample extracts in
# data/extracts, so the project runs out of the box. Real extracts need a key of their own.
SAMPLE_KEY = "microtrials-sample-key-for-bundled-data-only"

_HOW_TO_SET = (
    f"set {KEY_VARIABLE} to a long random secret, e.g. "
    f"export {KEY_VARIABLE}=$(python -c 'import secrets; print(secrets.token_hex(32))'), "
    "keep it somewhere safe and use the same key on every run so re-deliveries match the same pupils"
)


def pupil_key_from_env(extracts_dir: Path, sample_dir: Path) -> bytes:
    """The key from MICROTRIALS_PUPIL_KEY; when unset, the sample key, but only for the bundled sample folder."""
    value = os.environ.get(KEY_VARIABLE)
    if value is not None and value.strip():
        return value.encode("utf-8")
    if value is not None:
        raise MicrotrialsError(f"{KEY_VARIABLE} is set but empty: {_HOW_TO_SET}")
    if Path(extracts_dir).resolve() == Path(sample_dir).resolve():
        return SAMPLE_KEY.encode("utf-8")
    raise MicrotrialsError(
        f"{KEY_VARIABLE} is not set, and {extracts_dir} is not the bundled sample folder: pupil_ids are "
        f"stored only as a keyed hash, so a key is needed; {_HOW_TO_SET}"
    )


def pseudonymise(pupil_ids, key: bytes):
    """Hex HMAC-SHA256 of each pupil_id (UTF-8) under ``key``; same length and kind as the input.

    A pandas Series comes back as a Series on the same index; a pyarrow array as a string array;
    anything else iterable as a list.
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    if isinstance(pupil_ids, (pa.Array, pa.ChunkedArray)):
        values = pupil_ids.cast(pa.string()).to_pylist()
    else:
        values = [None if v is None or pd.isna(v) else str(v) for v in pupil_ids]
    # A missing id stays missing (the loader never passes one: an empty pupil_id is quarantined).
    # hmac.digest is the one-shot C path: about twice as fast as hmac.new(...).hexdigest(), same value.
    digests = [None if v is None else hmac.digest(key, v.encode("utf-8"), "sha256").hex() for v in values]
    if isinstance(pupil_ids, pd.Series):
        return pd.Series(digests, index=pupil_ids.index, dtype="str", name=pupil_ids.name)
    if isinstance(pupil_ids, (pa.Array, pa.ChunkedArray)):
        return pa.array(digests, type=pa.string())
    return digests
