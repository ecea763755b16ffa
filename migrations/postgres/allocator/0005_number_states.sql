-- What became of single numbers once handed out: one row per number whose
-- state is no longer the one its range gave it (issued, for a range of
-- Allocate). The ranges stay as they were committed.
CREATE TABLE number_states (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    series     TEXT COLLATE "C" NOT NULL,
    period     TEXT COLLATE "C" NOT NULL,
    number     BIGINT NOT NULL CHECK (number >= 1),
    state      TEXT NOT NULL CHECK (state IN ('confirmed', 'voided')),
    -- The reference of the document that holds the number; kept when the
    -- number is voided later.
    reference  TEXT NOT NULL DEFAULT '',
    -- Why it was voided.
    reason     TEXT NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, series, period, number)
);
-- Listing the numbers of one state in order.
CREATE INDEX number_states_by_state ON number_states (tenant_id, series, period, state, number);
