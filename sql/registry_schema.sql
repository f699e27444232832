-- Tables of the trial registry and of the evidence history (issue 11). CREATE ... IF NOT EXISTS:
-- applied by microtrials.publish.history.ensure_tables before the registry asset or a publication writes.

-- Every version of trials.csv the pipeline has read: its hash, when it was first read, where
-- from, and its text (so outcome switching and other changes can be audited later).
CREATE TABLE IF NOT EXISTS registry_versions (
    sha256      VARCHAR NOT NULL PRIMARY KEY,
    read_at     TIMESTAMP NOT NULL,
    path        VARCHAR NOT NULL,
    encoding    VARCHAR NOT NULL,
    rounds      INTEGER NOT NULL,   -- good rows
    problems    INTEGER NOT NULL,   -- rows left out
    content     VARCHAR NOT NULL    -- the file's text as read (decoded)
);

-- The current registry's rounds (one row per good row of trials.csv), rebuilt on each read.
CREATE TABLE IF NOT EXISTS registry_rounds (
    sha256             VARCHAR NOT NULL,
    line               INTEGER NOT NULL,
    intervention       VARCHAR NOT NULL,
    outcome_measure    VARCHAR NOT NULL,
    round              VARCHAR NOT NULL,
    start_date         DATE NOT NULL,
    end_date           DATE,
    schools            VARCHAR NOT NULL,  -- URNs, space-separated, sorted
    aliases            VARCHAR,           -- '|'-separated
    secondary_outcomes VARCHAR,           -- '|'-separated
    registered_on      DATE,
    toolkit_strand     VARCHAR,
    national_months    INTEGER,
    cost_per_pupil     DOUBLE,
    cost_rating        VARCHAR,
    description        VARCHAR,
    outcome_min        DOUBLE,            -- declared valid range of the primary outcome's scores
    outcome_max        DOUBLE,
    baseline_min       DOUBLE,            -- and of the baseline's
    baseline_max       DOUBLE
);
-- A warehouse made before the declared ranges gains their columns.
ALTER TABLE registry_rounds ADD COLUMN IF NOT EXISTS outcome_min DOUBLE;
ALTER TABLE registry_rounds ADD COLUMN IF NOT EXISTS outcome_max DOUBLE;
ALTER TABLE registry_rounds ADD COLUMN IF NOT EXISTS baseline_min DOUBLE;
ALTER TABLE registry_rounds ADD COLUMN IF NOT EXISTS baseline_max DOUBLE;

-- The current registry's bad rows, as the load report shows them.
CREATE TABLE IF NOT EXISTS registry_problems (
    sha256       VARCHAR NOT NULL,
    line         INTEGER NOT NULL,
    column_name  VARCHAR,
    problem      VARCHAR NOT NULL,
    action       VARCHAR NOT NULL,
    intervention VARCHAR
);

-- Every published evidence-table row, per publication (never deleted: the project's memory).
-- row_json holds the whole row as published (columns may be added over time), plus school_urns.
CREATE TABLE IF NOT EXISTS evidence_history (
    publication_id  VARCHAR NOT NULL,
    published_at    TIMESTAMP NOT NULL,
    intervention    VARCHAR NOT NULL,
    outcome_measure VARCHAR NOT NULL,
    round           VARCHAR,
    row_json        VARCHAR NOT NULL
);

-- What disclosure control must remember of each publication (never published; microtrials.publish.
-- disclosure.state): every true pupil count behind it with whether it was shown, the sums between them,
-- and every count shown by it or an earlier publication (last shown value). Written when a publication is
-- staged (confirmed false) and confirmed once it is swapped in; the next publication is audited against
-- the last confirmed one and every one staged since (one that may have been swapped in before a crash).
CREATE TABLE IF NOT EXISTS disclosure_states (
    run_id      VARCHAR NOT NULL,
    staged_at   TIMESTAMP NOT NULL,
    confirmed   BOOLEAN NOT NULL,
    state_json  VARCHAR NOT NULL,   -- {"cells": [[key, value, shown], ...], "relations": [...]}
    shown_json  VARCHAR NOT NULL    -- [[key, value], ...]: the last value shown of every count
);
