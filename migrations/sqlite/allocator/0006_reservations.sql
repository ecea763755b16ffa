-- Reservations: a number held by a lease until it is confirmed, released or
-- voided; and what a series does with a number given back.

-- 'void': a number given back is voided, never handed out again; 'reissue':
-- it goes back to the series, lowest first. Fixed once the series has handed
-- out a number.
ALTER TABLE series ADD COLUMN gap_policy TEXT NOT NULL DEFAULT 'void'
    CHECK (gap_policy IN ('void', 'reissue'));

-- A Reserve call's number is a range of its own.
CREATE TABLE allocations_with_reserve (
    tenant_id   TEXT NOT NULL,
    series      TEXT NOT NULL,
    period      TEXT NOT NULL,
    first_value INTEGER NOT NULL CHECK (first_value >= 1),
    count       INTEGER NOT NULL CHECK (count >= 1),
    kind        TEXT NOT NULL CHECK (kind IN ('allocate', 'advance', 'reserve')),
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
INSERT INTO allocations_with_reserve
    (tenant_id, series, period, first_value, count, kind, reason, request_id, format, date, created_at)
SELECT tenant_id, series, period, first_value, count, kind, reason, request_id, format, date, created_at
FROM allocations;
DROP TABLE allocations;
ALTER TABLE allocations_with_reserve RENAME TO allocations;

CREATE TABLE number_states_with_reserve (
    tenant_id  TEXT NOT NULL,
    series     TEXT NOT NULL,
    period     TEXT NOT NULL,
    number     INTEGER NOT NULL CHECK (number >= 1),
    state      TEXT NOT NULL
               CHECK (state IN ('issued', 'reserved', 'confirmed', 'released', 'voided')),
    -- The reference of the document that holds the number; kept when the
    -- number is voided later.
    reference  TEXT NOT NULL DEFAULT '',
    -- Why it was released or voided.
    reason     TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    -- The kind of the range that holds the number: every number of a
    -- 'reserve' range has a row from the start.
    origin     TEXT NOT NULL DEFAULT 'allocate' CHECK (origin IN ('allocate', 'reserve')),
    -- When the lease of its last reservation ends (or ended).
    expires_at TEXT,
    -- The request id of the call that last took the number, if it sent one.
    request_id TEXT,
    PRIMARY KEY (tenant_id, series, period, number)
) STRICT, WITHOUT ROWID;
INSERT INTO number_states_with_reserve
    (tenant_id, series, period, number, state, reference, reason, updated_at)
SELECT tenant_id, series, period, number, state, reference, reason, updated_at
FROM number_states;
DROP TABLE number_states;
ALTER TABLE number_states_with_reserve RENAME TO number_states;
-- Listing the numbers of one state in order.
CREATE INDEX number_states_by_state ON number_states (tenant_id, series, period, state, number);
-- Finding leases that have ended.
CREATE INDEX number_states_by_expiry ON number_states (expires_at) WHERE state = 'reserved';
