-- What became of single numbers once handed out: one row per number whose
-- state is no longer the one its range gave it (issued, for a range of
-- Allocate). The ranges stay as they were committed.
CREATE TABLE number_states (
    tenant_id  TEXT NOT NULL,
    series     TEXT NOT NULL,
    period     TEXT NOT NULL,
    number     INTEGER NOT NULL CHECK (number >= 1),
    state      TEXT NOT NULL CHECK (state IN ('confirmed', 'voided')),
    -- The reference of the document that holds the number; kept when the
    -- number is voided later.
    reference  TEXT NOT NULL DEFAULT '',
    -- Why it was voided.
    reason     TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, series, period, number)
) STRICT, WITHOUT ROWID;
-- Listing the numbers of one state in order.
CREATE INDEX number_states_by_state ON number_states (tenant_id, series, period, state, number);
