-- The ledger: every range of numbers an Allocate call received, and every
-- range an AdvanceCounter skipped, committed with the counter change itself.
-- Ranges, not numbers: one row per call, keyed by its first number.
-- Times are RFC 3339 text in UTC, written by the service, which sorts as text.
CREATE TABLE allocations (
    tenant_id   TEXT NOT NULL,
    series      TEXT NOT NULL,
    first_value INTEGER NOT NULL CHECK (first_value >= 1),
    count       INTEGER NOT NULL CHECK (count >= 1),
    kind        TEXT NOT NULL CHECK (kind IN ('allocate', 'advance')),
    -- Why an advance skipped its range; empty for an allocation.
    reason      TEXT NOT NULL DEFAULT '',
    -- The caller's request id, if it sent one; kept after the key is forgotten.
    request_id  TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, series, first_value)
) STRICT, WITHOUT ROWID;

-- Request ids of recent allocations: what a repeat of the call answers. A row
-- older than the retention window no longer counts and is purged.
CREATE TABLE request_ids (
    tenant_id   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    series      TEXT NOT NULL,
    count       INTEGER NOT NULL,
    -- Set in the transaction that claims the id, before it commits.
    first_value INTEGER,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX request_ids_by_age ON request_ids (created_at);
