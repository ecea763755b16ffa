-- Series as configured resources: one row per (tenant, series) with its
-- template, its reset and the time zone its days are counted in. A periodic
-- series keeps one counter per period ('' for a series that never resets).
CREATE TABLE series (
    tenant_id  TEXT NOT NULL,
    series     TEXT NOT NULL,
    -- Applies to numbers allocated after it is set; numbers already handed
    -- out keep their text (the ledger and request ids hold theirs).
    format     TEXT NOT NULL,
    -- Fixed once the series has handed out a number.
    reset      TEXT NOT NULL DEFAULT 'never'
               CHECK (reset IN ('never', 'yearly', 'monthly', 'daily')),
    -- An IANA name, fixed once the series has handed out a number.
    timezone   TEXT NOT NULL DEFAULT 'UTC',
    -- The first number of each period not yet begun.
    start_at   INTEGER NOT NULL DEFAULT 1 CHECK (start_at >= 1),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, series)
) STRICT, WITHOUT ROWID;
INSERT INTO series (tenant_id, series, format, created_at)
SELECT tenant_id, series, format, created_at FROM counters;

-- What a request id's numbers read: the template and the date (YYYY-MM-DD)
-- they were rendered with, whatever the series' template becomes later.
ALTER TABLE request_ids ADD COLUMN period TEXT NOT NULL DEFAULT '';
ALTER TABLE request_ids ADD COLUMN format TEXT;
ALTER TABLE request_ids ADD COLUMN date TEXT;
UPDATE request_ids SET
    format = (SELECT c.format FROM counters c
              WHERE c.tenant_id = request_ids.tenant_id AND c.series = request_ids.series),
    date = substr(created_at, 1, 10);

-- One counter per period. `base` is the value the period started from
-- (start_at - 1 when it began): numbers above it were handed out or skipped.
CREATE TABLE counters_by_period (
    tenant_id  TEXT NOT NULL,
    series     TEXT NOT NULL,
    period     TEXT NOT NULL,
    last_value INTEGER NOT NULL CHECK (last_value >= 0),
    base       INTEGER NOT NULL CHECK (base >= 0),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, series, period),
    FOREIGN KEY (tenant_id, series) REFERENCES series
) STRICT, WITHOUT ROWID;

-- The ledger keeps the text of every range too, by period.
CREATE TABLE allocations_by_period (
    tenant_id   TEXT NOT NULL,
    series      TEXT NOT NULL,
    period      TEXT NOT NULL,
    first_value INTEGER NOT NULL CHECK (first_value >= 1),
    count       INTEGER NOT NULL CHECK (count >= 1),
    kind        TEXT NOT NULL CHECK (kind IN ('allocate', 'advance')),
    -- Why an advance skipped its range; empty for an allocation.
    reason      TEXT NOT NULL DEFAULT '',
    -- The caller's request id, if it sent one; kept after the key is forgotten.
    request_id  TEXT,
    -- The template and the date (YYYY-MM-DD) the range's numbers read with.
    format      TEXT NOT NULL,
    date        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, series, period, first_value)
) STRICT, WITHOUT ROWID;

INSERT INTO counters_by_period (tenant_id, series, period, last_value, base, created_at)
SELECT tenant_id, series, '', last_value, 0, created_at FROM counters;
INSERT INTO allocations_by_period
    (tenant_id, series, period, first_value, count, kind, reason, request_id, format, date, created_at)
SELECT a.tenant_id, a.series, '', a.first_value, a.count, a.kind, a.reason, a.request_id,
       c.format, substr(a.created_at, 1, 10), a.created_at
FROM allocations a JOIN counters c ON c.tenant_id = a.tenant_id AND c.series = a.series;
DROP TABLE counters;
DROP TABLE allocations;
ALTER TABLE counters_by_period RENAME TO counters;
ALTER TABLE allocations_by_period RENAME TO allocations;
