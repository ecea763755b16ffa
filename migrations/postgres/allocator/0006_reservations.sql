-- Reservations: a number held by a lease until it is confirmed, released or
-- voided; and what a series does with a number given back.
ALTER TABLE series
    -- 'void': a number given back is voided, never handed out again;
    -- 'reissue': it goes back to the series, lowest first. Fixed once the
    -- series has handed out a number.
    ADD COLUMN gap_policy TEXT NOT NULL DEFAULT 'void'
        CHECK (gap_policy IN ('void', 'reissue'));

-- A Reserve call's number is a range of its own.
ALTER TABLE allocations
    DROP CONSTRAINT allocations_kind_check,
    ADD CONSTRAINT allocations_kind_check CHECK (kind IN ('allocate', 'advance', 'reserve'));

ALTER TABLE number_states
    DROP CONSTRAINT number_states_state_check,
    ADD CONSTRAINT number_states_state_check
        CHECK (state IN ('issued', 'reserved', 'confirmed', 'released', 'voided')),
    -- The kind of the range that holds the number: every number of a
    -- 'reserve' range has a row from the start.
    ADD COLUMN origin TEXT NOT NULL DEFAULT 'allocate'
        CHECK (origin IN ('allocate', 'reserve')),
    -- When the lease of its last reservation ends (or ended).
    ADD COLUMN expires_at TIMESTAMPTZ,
    -- The request id of the call that last took the number, if it sent one.
    ADD COLUMN request_id TEXT COLLATE "C";

-- Finding leases that have ended.
CREATE INDEX number_states_by_expiry ON number_states (expires_at) WHERE state = 'reserved';
