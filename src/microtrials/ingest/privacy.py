"""The pupil key: schools' pupil_ids are stored only as an HMAC-SHA256 keyed by MICROTRIALS_PUPIL_KEY.

Three rules protect the key (README "The pupil key"):

- it must carry at least ``MIN_KEY_BITS`` (128) bits, counted as :func:`key_bits` says;
- the documented sample key is used only when every file to load is, byte for byte, one of the
  bundled sample extracts (their sha256 in :mod:`microtrials.sample_manifest`);
- the warehouse keeps a fingerprint of the key, ``HMAC-SHA256(key, FINGERPRINT_LABEL)`` (never the
  key), and a load under a different key stops unless the officer asks for a new key
  (``--new-pupil-key`` / ``MICROTRIALS_NEW_PUPIL_KEY=1``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from microtrials.errors import MicrotrialsError

KEY_VARIABLE = "MICROTRIALS_PUPIL_KEY"
NEW_KEY_VARIABLE = "MICROTRIALS_NEW_PUPIL_KEY"

# Documented, public, and therefore no secret: used only for the bundled sample extracts in
# data/extracts (matched by content hash), so the project runs out of the box.
SAMPLE_KEY = "microtrials-sample-key-for-bundled-data-only"

# NIST SP 800-107 r1 section 5.3.4: an HMAC key should carry at least the security strength wanted;
# 128 bits is the floor NIST SP 800-57 part 1 accepts beyond 2030.
MIN_KEY_BITS = 128
# A key with fewer distinct characters than this is a pattern, not a random string (a random
# 32-hex-digit key has fewer than 8 distinct digits with probability below 1e-6).
MIN_DISTINCT_CHARACTERS = 8
FINGERPRINT_LABEL = b"microtrials pupil key fingerprint v1"

_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/=_-]+")

HOW_TO_SET = (
    f"set {KEY_VARIABLE} to a long random secret, e.g. "
    f"export {KEY_VARIABLE}=$(python3 -c 'import secrets; print(secrets.token_hex(32))'), "
    "keep it somewhere safe and use the same key on every run so re-deliveries match the same pupils"
)


def key_bits(key: str) -> int:
    """How many bits of secret a key is counted as carrying: length x bits per character.

    Hex digits count 4 bits each (``secrets.token_hex``); text drawn only from the base64 alphabet
    (letters, digits, ``+/-_=``: ``secrets.token_urlsafe``, ``openssl rand -base64``) counts 6;
    any other text (spaces, punctuation, accents: typed by a person) counts 4, deliberately low,
    because a phrase a person chose carries far less than the characters could.
    """
    if _HEX.fullmatch(key):
        per_character = 4
    elif _BASE64.fullmatch(key):
        per_character = 6
    else:
        per_character = 4
    return len(key) * per_character


def check_key_strength(key: str) -> None:
    """Raise :class:`MicrotrialsError` unless ``key`` carries ``MIN_KEY_BITS`` (see :func:`key_bits`)
    and is not the public sample key."""
    if key == SAMPLE_KEY:
        raise MicrotrialsError(
            f"{KEY_VARIABLE} is the documented sample key, which is public and protects nothing; {HOW_TO_SET}"
        )
    bits = key_bits(key)
    if bits < MIN_KEY_BITS:
        hex_needed = math.ceil(MIN_KEY_BITS / 4)
        raise MicrotrialsError(
            f"{KEY_VARIABLE} is too short: it carries about {bits} bits and needs at least {MIN_KEY_BITS} "
            f"(e.g. {hex_needed} hex characters; a short key can be recovered from one stored hash); {HOW_TO_SET}"
        )
    if len(set(key)) < MIN_DISTINCT_CHARACTERS:
        raise MicrotrialsError(
            f"{KEY_VARIABLE} repeats a few characters ({len(set(key))} different ones): it is a pattern, "
            f"not a random secret; {HOW_TO_SET}"
        )
    pattern = weak_pattern(key)
    if pattern:
        raise MicrotrialsError(f"{KEY_VARIABLE} is a pattern, not a random secret: {pattern}; {HOW_TO_SET}")


# Weak-key patterns (red-team finding 14). A run is 4 or more characters each one step up or down
# the sequence 0-9 then a-z, in one case ("0123", "9abc", "fedc", "WXYZ"); a key is refused when runs cover
# half of it or more. (A quarter refused about 1 random 32-hex key in 20,000: runs of 4 turn up by
# chance; half is out of reach of chance, P < 1e-9 per key.) A repeated block is a key that is some shorter text over and over. A
# phrase is text split by spaces whose letters-only words make up more than half of it: chosen
# words carry far fewer bits than their characters (a random 64-hex key meets none of these).
_SEQUENCE = "0123456789abcdefghijklmnopqrstuvwxyz"
RUN_MIN = 4
RUN_MAX_SHARE = 0.5


def weak_pattern(key: str) -> str | None:
    """Why ``key`` is a pattern rather than a random secret (plain words), or None."""
    period = next((p for p in range(1, len(key) // 2 + 1) if key[p:] == key[:-p]), None)
    if period is not None:
        return f"it repeats the same {period} characters"
    steps = [_SEQUENCE.find(c.lower()) + (100 if c.isupper() else 0) if c.lower() in _SEQUENCE else -1 for c in key]
    in_runs, start = 0, 0
    for i in range(1, len(key) + 1):
        step = steps[i] - steps[i - 1] if i < len(key) and min(steps[i], steps[i - 1]) >= 0 else None
        direction = steps[start + 1] - steps[start] if start + 1 < len(key) else None
        if i < len(key) and step in (1, -1) and (i == start + 1 or step == direction):
            continue
        if i - start >= RUN_MIN:
            in_runs += i - start
        start = i if i < len(key) and step not in (1, -1) else i - 1
    if in_runs >= RUN_MAX_SHARE * len(key):
        return f"{in_runs} of its {len(key)} characters are runs such as 0123 or abcd"
    words = [w for w in key.split() if len(w) >= 2 and w.isalpha()]
    if len(key.split()) >= 2 and sum(map(len, words)) * 2 > len(key):
        return "it is mostly words separated by spaces, which carry far fewer bits than their length"
    return None


def sample_hashes() -> dict[str, str]:
    """sha256 -> file name of every bundled sample extract (from :mod:`microtrials.sample_manifest`)."""
    from microtrials.sample_manifest import SAMPLE_SHA256

    return {digest: name for name, digest in SAMPLE_SHA256.items()}


def is_sample_file(path: Path) -> bool:
    """Whether ``path`` holds, byte for byte, one of the bundled sample extracts."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return False
    return digest in sample_hashes()


def pupil_key(files: Iterable[Path], environ: Mapping[str, str] | None = None) -> bytes:
    """The key for loading ``files``: ``MICROTRIALS_PUPIL_KEY`` (checked by :func:`check_key_strength`),
    else the key file of the workspace ``MICROTRIALS_WORKSPACE`` names (microtrials.workspace), else the sample key when every file is a bundled sample extract, else an error saying how to set it."""
    environ = os.environ if environ is None else environ
    value = environ.get(KEY_VARIABLE)
    if value is not None and value.strip():
        value = value.strip()
        check_key_strength(value)
        return value.encode("utf-8")
    if value is not None:
        raise MicrotrialsError(f"{KEY_VARIABLE} is set but empty: {HOW_TO_SET}")
    from microtrials import workspace

    ws = workspace.from_environment(environ)
    if ws is not None:  # a workspace's own key file; never the sample key (see workspace.demo_file_reason)
        stored = workspace.read_key(ws.key_file)
        try:
            check_key_strength(stored)
        except MicrotrialsError as exc:
            raise MicrotrialsError(f"the pupil key file {ws.key_file} holds no usable key: {exc}") from exc
        return stored.encode("utf-8")
    others = [Path(p).name for p in files if not is_sample_file(p)]
    if not others:
        return SAMPLE_KEY.encode("utf-8")
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    raise MicrotrialsError(
        f"{KEY_VARIABLE} is not set, and {shown} {'is' if len(others) == 1 else 'are'} not among the bundled "
        f"sample extracts (the public sample key is only for those exact files): pupil_ids are stored only "
        f"as a keyed hash, so a secret key is needed; {HOW_TO_SET}"
    )


def pupil_key_from_env(extracts_dir: Path, sample_dir: Path | None = None) -> bytes:
    """:func:`pupil_key` for every file a load of ``extracts_dir`` would read.

    (``sample_dir`` is accepted for older callers and not used: the sample key now depends on the
    files' content, not on the folder they are in.)
    """
    from microtrials.ingest.loading import extract_files

    folder = Path(extracts_dir)
    return pupil_key(extract_files(folder) if folder.is_dir() else [])


def new_key_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the officer asked for a new pupil key (``MICROTRIALS_NEW_PUPIL_KEY=1``, set by
    ``microtrials run --new-pupil-key``)."""
    environ = os.environ if environ is None else environ
    return environ.get(NEW_KEY_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def fingerprint(key: bytes) -> str:
    """``HMAC-SHA256(key, FINGERPRINT_LABEL)`` in hex: tells keys apart without revealing the key."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return hmac.digest(key, FINGERPRINT_LABEL, "sha256").hex()


def check_key_unchanged(con: duckdb.DuckDBPyConnection, key: bytes, new_key: bool = False) -> str | None:
    """Compare ``key`` with the fingerprint the warehouse holds, and record it when there is none.

    - Same key, or a first load: nothing to say (None).
    - The warehouse was loaded under the public sample key: the new key replaces it (the sample
      pupils were never secret); returns a note saying so.
    - Any other change: raises :class:`MicrotrialsError`, unless ``new_key`` (the officer's
      ``--new-pupil-key``), which records the new fingerprint and returns a note.
    - A load under the sample key into a warehouse keyed by a secret: raises (never switch back).
    """
    from microtrials.ingest import warehouse

    wanted = fingerprint(key)
    sample = fingerprint(SAMPLE_KEY.encode("utf-8"))
    stored = con.execute(warehouse.sql("pupil_key_fingerprint")).fetchall()
    current = stored[0][0] if stored else None
    if current == wanted:
        return None
    note = None
    if current is not None:
        if wanted == sample:
            raise MicrotrialsError(
                f"the warehouse was loaded with a secret pupil key, and this run has none ({KEY_VARIABLE} is "
                f"not set): set {KEY_VARIABLE} to the deployment's key and run again"
            )
        if current != sample and not new_key:
            raise MicrotrialsError(
                f"{KEY_VARIABLE} is not the key this warehouse was loaded with (its fingerprint differs): "
                "use the deployment's key and run again; only if the key really must change, run "
                "`microtrials run --new-pupil-key` (or set MICROTRIALS_NEW_PUPIL_KEY=1): every pupil of a "
                "later delivery will then look like a new pupil"
            )
        note = (
            "the pupil key changed from the public sample key: later deliveries are keyed by the secret key"
            if current == sample
            else "a new pupil key was accepted (--new-pupil-key): pupils in later deliveries look like new pupils"
        )
    con.execute(warehouse.sql("record_pupil_key_fingerprint"), {"fingerprint": wanted, "sample": wanted == sample})
    return note


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
