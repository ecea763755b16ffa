-- One row per (tenant, series). `last_value` is the last number handed out.
-- The "C" collation orders series names bytewise, which page tokens rely on.
CREATE TABLE counters (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    series     TEXT COLLATE "C" NOT NULL,
    last_value BIGINT NOT NULL CHECK (last_value >= 0),
    -- Fixed when the series is created, so a changed server default never
    -- reformats numbers already handed out.
    format     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, series)
);
