-- One row per (tenant, series). `last_value` is the last number handed out.
-- TEXT compares bytewise (BINARY collation), which page tokens rely on.
-- STRICT: a sum past i64::MAX, which SQLite turns into a REAL, is refused
-- instead of stored.
CREATE TABLE counters (
    tenant_id  TEXT NOT NULL,
    series     TEXT NOT NULL,
    last_value INTEGER NOT NULL CHECK (last_value >= 0),
    -- Fixed when the series is created, so a changed server default never
    -- reformats numbers already handed out.
    format     TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, series)
) STRICT, WITHOUT ROWID;
