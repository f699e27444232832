"""The pupil key: where it comes from, and the keyed hash that replaces every pupil_id."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from microtrials.errors import MicrotrialsError
from microtrials.privacy import SAMPLE_KEY, pseudonymise, pupil_key_from_env

# RFC 4231, test case 2: HMAC-SHA256 with key "Jefe".
RFC4231_DATA = "what do ya want for nothing?"
RFC4231_MAC = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_pseudonymise_is_hmac_sha256_of_the_id():
    assert pseudonymise(pd.Series([RFC4231_DATA]), b"Jefe").tolist() == [RFC4231_MAC]


def test_pseudonymise_keeps_length_index_and_kind():
    ids = pd.Series(["A1", "B2", "A1"], index=[10, 11, 12])
    keys = pseudonymise(ids, b"k")
    assert list(keys.index) == [10, 11, 12] and keys[10] == keys[12] != keys[11]
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in keys)
    arrow = pseudonymise(pa.array(["A1", "B2", "A1"]), b"k")
    assert isinstance(arrow, pa.Array) and arrow.to_pylist() == keys.tolist()


def test_a_different_key_gives_different_hashes():
    assert pseudonymise(pd.Series(["A1"]), b"one")[0] != pseudonymise(pd.Series(["A1"]), b"two")[0]


def test_key_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", "a secret")
    assert pupil_key_from_env(tmp_path / "real", tmp_path / "sample") == b"a secret"


def test_sample_key_only_for_the_sample_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MICROTRIALS_PUPIL_KEY", raising=False)
    (tmp_path / "sample").mkdir()
    assert pupil_key_from_env(tmp_path / "sample" / ".." / "sample", tmp_path / "sample") == SAMPLE_KEY.encode()
    with pytest.raises(MicrotrialsError, match=r"MICROTRIALS_PUPIL_KEY is not set.*export MICROTRIALS_PUPIL_KEY="):
        pupil_key_from_env(tmp_path / "real", tmp_path / "sample")


def test_an_empty_key_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", "  ")
    with pytest.raises(MicrotrialsError, match="MICROTRIALS_PUPIL_KEY is set but empty"):
        pupil_key_from_env(tmp_path, tmp_path)


def test_missing_ids_stay_missing_and_numbers_hash_as_text():
    keys = pseudonymise(pd.Series(["7", None, 7]), b"k")
    assert keys[0] == keys[2] and pd.isna(keys[1])
