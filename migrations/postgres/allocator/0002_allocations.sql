-- The ledger: every range of numbers an Allocate call received, and every
-- range an AdvanceCounter skipped, committed with the counter change itself.
-- Ranges, not numbers: one row per call, keyed by its first number.
CREATE TABLE allocations (
    tenant_id   TEXT COLLATE "C" NOT NULL,
    series      TEXT COLLATE "C" NOT NULL,
    first_value BIGINT NOT NULL CHECK (first_value >= 1),
    count       BIGINT NOT NULL CHECK (count >= 1),
    kind        TEXT NOT NULL CHECK (kind IN ('allocate', 'advance')),
    -- Why an advance skipped its range; empty for an allocation.
    reason      TEXT NOT NULL DEFAULT '',
    -- The caller's request id, if it sent one; kept after the key is forgotten.
    request_id  TEXT COLLATE "C",
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, series, first_value)
);

-- Request ids of recent allocations: what a repeat of the call answers. A row
-- older than the retention window no longer counts and is purged.
CREATE TABLE request_ids (
    tenant_id   TEXT COLLATE "C" NOT NULL,
    request_id  TEXT COLLATE "C" NOT NULL,
    series      TEXT COLLATE "C" NOT NULL,
    count       BIGINT NOT NULL,
    -- Set in the transaction that claims the id, before it commits.
    first_value BIGINT,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);
CREATE INDEX request_ids_by_age ON request_ids (created_at);

-- Raised by an allocation statement that finds one of its request ids in use
-- by another call: the statement, its own transaction, then rolls back whole
-- and the allocator claims the ids before it allocates.
CREATE FUNCTION request_id_in_use() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a request id of this batch is in use' USING ERRCODE = 'NB001';
END
$$;
