"""The pupil key: where it comes from, how strong it must be, its fingerprint, and the keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import shutil

import pandas as pd
import pyarrow as pa
import pytest

from microtrials import sample_data
from microtrials.ingest import privacy
from microtrials.ingest import warehouse
from microtrials.errors import MicrotrialsError
from microtrials.ingest.loading import load_folder
from microtrials.ingest.privacy import SAMPLE_KEY, pseudonymise, pupil_key_from_env
from microtrials.sample_manifest import SAMPLE_SHA256
from tests.conftest import REPO_ROOT, pupil_rows

# RFC 4231, test case 2: HMAC-SHA256 with key "Jefe".
RFC4231_DATA = "what do ya want for nothing?"
RFC4231_MAC = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
SAMPLES = REPO_ROOT / "data" / "extracts"
STRONG = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
OTHER_STRONG = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"


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


def test_missing_ids_stay_missing_and_numbers_hash_as_text():
    keys = pseudonymise(pd.Series(["7", None, 7]), b"k")
    assert keys[0] == keys[2] and pd.isna(keys[1])


# ---- strength: at least 128 bits ------------------------------------------------------------


@pytest.mark.parametrize(
    "key, bits",
    [
        ("0" * 31 + "1", 128),  # hex: 4 bits a character
        (secrets.token_hex(16), 128),
        (secrets.token_urlsafe(16), 132),  # 22 characters of base64url: 6 bits each
        ("correct horse battery staple", 112),  # other text: 4 bits a character
        ("x", 6),
    ],
)
def test_key_bits_counts_what_a_generator_gives(key, bits):
    assert privacy.key_bits(key) == bits


@pytest.mark.parametrize(
    "key, message",
    [
        ("x", "too short: it carries about 6 bits"),
        ("a secret", "too short"),
        ("0123456789abcdef0123456789abcde", "too short"),  # 31 hex characters: 124 bits
        ("correct horse battery staple", "too short"),
        ("ab" * 40, "repeats a few characters"),
        # Red-team finding 14: patterns long enough to pass the bit count
        ("0123456789abcdef0123456789abcdef", "a pattern, not a random secret: it repeats the same 16 characters"),
        ("01234567" * 4, "a pattern, not a random secret: it repeats the same 8 characters"),
        ("correct horse battery staple!!!!", "a pattern, not a random secret: it is mostly words"),
        ("fedcba9876543210zyxwvutsrqponmlk", "a pattern, not a random secret: 32 of its 32 characters are runs"),
        ("0123456789abcdef5170ca68f3234086", "16 of its 32 characters are runs"),
        (SAMPLE_KEY, "the documented sample key"),
    ],
)
def test_a_weak_key_is_refused_with_how_to_set_one(monkeypatch, tmp_path, key, message):
    monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", key)
    with pytest.raises(MicrotrialsError, match=message) as raised:
        pupil_key_from_env(tmp_path)
    assert "export MICROTRIALS_PUPIL_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')" in str(
        raised.value
    )


@pytest.mark.parametrize("key", [secrets.token_hex(16), secrets.token_hex(32), secrets.token_urlsafe(16)])
def test_a_generated_key_is_accepted_and_trimmed(monkeypatch, tmp_path, key):
    monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", f"  {key}\n")
    assert pupil_key_from_env(tmp_path) == key.encode()


def test_an_empty_key_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", "  ")
    with pytest.raises(MicrotrialsError, match="MICROTRIALS_PUPIL_KEY is set but empty"):
        pupil_key_from_env(tmp_path)


# ---- the sample key: only for the exact bundled sample files --------------------------------


def test_the_manifest_matches_the_committed_sample_files(tmp_path):
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SAMPLES.glob("*.csv")}
    assert on_disk and on_disk == SAMPLE_SHA256
    # and the generator writes the module as committed (so regenerating keeps them in step)
    module = tmp_path / "sample_manifest.py"
    sample_data.write_manifest(SAMPLES, module)
    assert module.read_text() == (REPO_ROOT / "src" / "microtrials" / "sample_manifest.py").read_text()


def test_readme_and_code_agree_on_the_sample_key():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`{SAMPLE_KEY}`" in readme
    assert "microtrials-sample-key-not-secret" not in readme


def test_the_sample_key_serves_only_the_bundled_files(monkeypatch, tmp_path):
    monkeypatch.delenv("MICROTRIALS_PUPIL_KEY", raising=False)
    assert pupil_key_from_env(SAMPLES) == SAMPLE_KEY.encode()
    copy = tmp_path / "extracts"
    shutil.copytree(SAMPLES, copy)
    assert pupil_key_from_env(copy) == SAMPLE_KEY.encode()  # the same bytes, wherever they are
    (copy / "111601.csv").write_text("school_urn,pupil_id\n111601,REAL-PUPIL\n")
    with pytest.raises(MicrotrialsError) as raised:
        pupil_key_from_env(copy)
    message = str(raised.value)
    assert "MICROTRIALS_PUPIL_KEY is not set, and 111601.csv is not among the bundled sample extracts" in message
    assert "export MICROTRIALS_PUPIL_KEY=" in message


def test_an_edited_sample_file_needs_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("MICROTRIALS_PUPIL_KEY", raising=False)
    copy = tmp_path / "extracts"
    shutil.copytree(SAMPLES, copy)
    target = copy / "111100.csv"
    target.write_bytes(target.read_bytes().replace(b"\n111100,", b"\n111100,X", 1))  # one real-looking id
    with pytest.raises(MicrotrialsError, match="111100.csv is not among the bundled sample extracts"):
        pupil_key_from_env(copy)


def test_a_new_file_in_the_bundled_folder_needs_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("MICROTRIALS_PUPIL_KEY", raising=False)
    real = tmp_path / "999999.csv"
    real.write_text("school_urn,pupil_id\n999999,REAL\n")
    files = sorted(SAMPLES.glob("*.csv")) + [real]
    with pytest.raises(MicrotrialsError, match="999999.csv is not among the bundled sample extracts"):
        privacy.pupil_key(files)


# ---- the fingerprint: a changed key stops the load ------------------------------------------


@pytest.fixture
def con(tmp_path):
    connection = warehouse.connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def _stored(con) -> list[tuple]:
    return con.execute("SELECT version, fingerprint, sample_key FROM pupil_key_fingerprint ORDER BY version").fetchall()


def test_the_warehouse_keeps_a_fingerprint_never_the_key(con, write_extract):
    folder = write_extract("111601.csv", pupil_rows(3)).parent
    load_folder(con, folder, STRONG.encode())
    expected = hmac.new(STRONG.encode(), b"microtrials pupil key fingerprint v1", hashlib.sha256).hexdigest()
    assert _stored(con) == [(1, expected, False)]
    dump = "".join(
        con.execute(f"SELECT * FROM {t}").df().astype(str).to_csv()  # table names are constants here
        for t in ("pupils", "quarantine", "deliveries", "pupil_key_fingerprint")
    )
    assert STRONG not in dump


def test_a_changed_key_stops_the_load_unless_the_officer_asks(con, write_extract):
    folder = write_extract("111601.csv", pupil_rows(3)).parent
    load_folder(con, folder, STRONG.encode())
    write_extract("111602.csv", pupil_rows(2, urn="111602"))
    with pytest.raises(MicrotrialsError, match=r"not the key this warehouse was loaded with.*--new-pupil-key"):
        load_folder(con, folder, OTHER_STRONG.encode())
    assert con.execute("SELECT count(*) FROM pupils").fetchone()[0] == 3  # nothing loaded under the wrong key
    reports = load_folder(con, folder, OTHER_STRONG.encode(), new_pupil_key=True)
    assert [r.status for r in reports] == ["unchanged", "loaded"]
    assert [row[0] for row in _stored(con)] == [1, 2]
    assert _stored(con)[-1][1] == privacy.fingerprint(OTHER_STRONG.encode())
    load_folder(con, folder, OTHER_STRONG.encode())  # the new key is now the warehouse's key


def test_the_new_key_flag_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MICROTRIALS_NEW_PUPIL_KEY", raising=False)
    assert not privacy.new_key_allowed()
    monkeypatch.setenv("MICROTRIALS_NEW_PUPIL_KEY", "1")
    assert privacy.new_key_allowed()


def test_leaving_the_sample_key_is_allowed_returning_to_it_is_not(con):
    sample = SAMPLE_KEY.encode()
    assert privacy.check_key_unchanged(con, sample) is None
    note = privacy.check_key_unchanged(con, STRONG.encode())
    assert note and "public sample key" in note
    with pytest.raises(MicrotrialsError, match="loaded with a secret pupil key, and this run has none"):
        privacy.check_key_unchanged(con, sample, new_key=True)


def test_generated_keys_are_never_taken_for_patterns():
    """A key from secrets (hex or urlsafe) passes the pattern rules: 20,000 of each tried."""
    assert not [k for k in (secrets.token_hex(16) for _ in range(20000)) if privacy.weak_pattern(k)]
    assert not [k for k in (secrets.token_urlsafe(16) for _ in range(20000)) if privacy.weak_pattern(k)]


def test_a_random_key_with_two_chance_runs_is_not_taken_for_a_pattern():
    """secrets.token_hex(16) gave this key in CI: runs 6789 and 2345 (8 of 32 characters) by chance."""
    assert privacy.weak_pattern("c7f833a9946789a6e2732345231f2def") is None
