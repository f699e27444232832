-- The warehouse tables. Applied on every connect; CREATE ... IF NOT EXISTS keeps it idempotent.

-- One row per pupil per trial, as delivered (after validation). pupil_key is the keyed hash of
-- the school's pupil_id (HMAC-SHA256, key in MICROTRIALS_PUPIL_KEY); the raw id is never stored.
CREATE TABLE IF NOT EXISTS pupils (
    school_urn      VARCHAR NOT NULL,
    pupil_key       VARCHAR NOT NULL,
    intervention    VARCHAR NOT NULL,
    outcome_measure VARCHAR NOT NULL,
    arm             VARCHAR NOT NULL,   -- 'intervention' or 'control'
    outcome         DOUBLE,             -- NULL: no post-test (attrition)
    baseline        DOUBLE,
    fsm             BOOLEAN,
    gender          VARCHAR,
    year_group      INTEGER,
    send            BOOLEAN,
    source_file     VARCHAR NOT NULL,
    source_line     INTEGER NOT NULL,   -- as a spreadsheet shows it: header = line 1
    delivery_id     VARCHAR NOT NULL    -- sha256 of the delivered file
);

-- Rows that broke a rule, with where and why. Never holds a pupil_id.
CREATE TABLE IF NOT EXISTS quarantine (
    delivery_id     VARCHAR NOT NULL,
    source_file     VARCHAR NOT NULL,
    line            INTEGER NOT NULL,
    school_urn      VARCHAR,
    column_name     VARCHAR,
    reason          VARCHAR NOT NULL,
    quarantined_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- What was loaded from what: one row per file seen.
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id      VARCHAR NOT NULL,
    file_name        VARCHAR NOT NULL,
    school_urn       VARCHAR,
    trials           VARCHAR,           -- 'intervention / outcome_measure' entries joined by '; '
    rows_read        INTEGER NOT NULL,
    rows_loaded      INTEGER NOT NULL,
    rows_quarantined INTEGER NOT NULL,
    columns_dropped  VARCHAR,
    status           VARCHAR NOT NULL,  -- 'loaded' | 'rejected' (an unchanged re-load adds no row)
    reason           VARCHAR,
    loaded_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Added for re-delivery: which trial a quarantined row named, so a school's new delivery of a
-- trial replaces that trial's quarantine rows too. (ALTER ... IF NOT EXISTS upgrades older files.)
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS intervention VARCHAR;
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS outcome_measure VARCHAR;
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS rule VARCHAR;  -- short rule name, as in the load report
-- The file's load report as JSON (no pupil identifiers), so an unchanged file is reported without re-reading it.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS report_json VARCHAR;

-- The pupil key's fingerprint, HMAC-SHA256(key, a fixed label), never the key: a run under another
-- key stops unless the officer asks for a new one. The latest version is the key in use.
CREATE TABLE IF NOT EXISTS pupil_key_fingerprint (
    version      INTEGER NOT NULL,
    fingerprint  VARCHAR NOT NULL,
    sample_key   BOOLEAN NOT NULL,     -- the public key of the bundled sample extracts
    recorded_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Which registered round of a trial the pupil belongs to (the extract's optional `round` column).
ALTER TABLE pupils ADD COLUMN IF NOT EXISTS round VARCHAR;
-- The trial key's round as resolved when the row was loaded (microtrials.ingest.trial_key: the registered
-- round, else the round sent, else ''); NULL for rows loaded before it was kept. Only planning reads it:
-- a re-sent delivery still replaces these rows when a later registry no longer places them (e.g. the
-- school was since planned in a second round). The analysis reads `round` as sent.
ALTER TABLE pupils ADD COLUMN IF NOT EXISTS key_round VARCHAR;

-- Added later: the round a set-aside row sent, and its trial key's round as resolved at load (as
-- pupils.key_round); NULL for rows set aside before they were kept, or naming no trial.
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS "round" VARCHAR;
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS key_round VARCHAR;

-- Warnings about loaded rows (a value blanked, an outcome kept as no post-test) and about whole
-- files (line NULL, e.g. read as Windows-1252), beside quarantine. Never holds a pupil_id.
CREATE TABLE IF NOT EXISTS load_warnings (
    delivery_id     VARCHAR NOT NULL,
    source_file     VARCHAR NOT NULL,
    line            INTEGER,            -- as the file shows it (header = line 1); NULL for the whole file
    school_urn      VARCHAR,
    column_name     VARCHAR,
    rule            VARCHAR NOT NULL,
    reason          VARCHAR NOT NULL,
    intervention    VARCHAR,
    outcome_measure VARCHAR
);

-- What each delivery did (or was held from doing) to each (school, trial, round), and each withdrawal
-- or accept: one row per change set (microtrials.ingest.change_sets). Never deleted: the load's memory.
CREATE TABLE IF NOT EXISTS change_sets (
    delivery_id         VARCHAR,            -- sha256 of the delivered file; NULL for a withdrawal
    file_name           VARCHAR,
    school_urn          VARCHAR NOT NULL,
    intervention        VARCHAR NOT NULL,   -- the registered name, else the spelling delivered
    outcome_measure     VARCHAR NOT NULL,
    "round"             VARCHAR NOT NULL,   -- the registered round, else the round sent, else ''
    key_intervention    VARCHAR NOT NULL,   -- the trial key (microtrials.ingest.trial_key.TrialKey)
    key_outcome_measure VARCHAR NOT NULL,
    key_round           VARCHAR NOT NULL,
    pupils_before       INTEGER NOT NULL,
    pupils_after        INTEGER NOT NULL,
    outcomes_before     INTEGER NOT NULL,
    outcomes_after      INTEGER NOT NULL,
    added               INTEGER NOT NULL,
    removed             INTEGER NOT NULL,
    state               VARCHAR NOT NULL,   -- 'applied' | 'held' | 'accepted' | 'withdrawn'
    reason              VARCHAR,            -- why it was held
    message             VARCHAR NOT NULL,   -- the line the officer was shown
    recorded_at         TIMESTAMP NOT NULL DEFAULT current_timestamp
);
-- Added later: how many pupils kept by a change set have another outcome score (given, blanked or changed);
-- NULL for change sets recorded before it was counted.
ALTER TABLE change_sets ADD COLUMN IF NOT EXISTS scores_changed INTEGER;
-- Added later: pupils kept whose arm, baseline, or other details (fsm, gender, year_group, send) differ.
ALTER TABLE change_sets ADD COLUMN IF NOT EXISTS arms_changed INTEGER;
ALTER TABLE change_sets ADD COLUMN IF NOT EXISTS baselines_changed INTEGER;
ALTER TABLE change_sets ADD COLUMN IF NOT EXISTS details_changed INTEGER;

-- What each withdrawal (microtrials withdraw) covers, one row per withdrawal: the whole school (every trial
-- and round: both NULL), one trial (every outcome measure and round of it: key_round NULL), one round of
-- every trial (key_intervention NULL), or one trial round. The loader holds any later file of the school
-- with rows in it until accepted (change_sets.withdrawals). Added later: a warehouse written before has
-- only the withdrawn change sets, each read as covering every outcome measure of its trial round.
CREATE TABLE IF NOT EXISTS withdrawal_scopes (
    school_urn          VARCHAR NOT NULL,
    key_intervention    VARCHAR,            -- the trial key's intervention; NULL: every trial
    key_round           VARCHAR,            -- the trial key's round; NULL: every round
    recorded_at         TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- The latest `deliveries` record under each file name: what the file of that name now is (an earlier
-- content sent again under the name is a new delivery). The one definition the loader
-- (sql/delivery_report.sql), its concurrency guard (delivery_seen.sql) and the sensor (recorded_files.sql)
-- read. (A join on the latest time, not a window, which would carry every record's report through a sort:
-- 40 ms against 470 ms for 200 files among 200,000 records.) A warehouse written before the view has
-- none until a writing connection opens it; the sensor, which only reads, counts no file as recorded
-- until then (pipelines/sensors.py).
CREATE VIEW IF NOT EXISTS latest_deliveries AS
SELECT d.delivery_id, d.file_name, d.school_urn, d.status, d.reason, d.report_json, d.loaded_at
FROM deliveries AS d
JOIN (SELECT file_name, max(loaded_at) AS loaded_at FROM deliveries GROUP BY file_name) AS latest
  ON latest.file_name = d.file_name AND latest.loaded_at = d.loaded_at;
