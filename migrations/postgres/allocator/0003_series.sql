-- Series as configured resources: one row per (tenant, series) with its
-- template, its reset and the time zone its days are counted in. A periodic
-- series keeps one counter per period ('' for a series that never resets).
CREATE TABLE series (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    series     TEXT COLLATE "C" NOT NULL,
    -- Applies to numbers allocated after it is set; numbers already handed
    -- out keep their text (the ledger and request ids hold theirs).
    format     TEXT NOT NULL,
    -- Fixed once the series has handed out a number.
    reset      TEXT NOT NULL DEFAULT 'never'
               CHECK (reset IN ('never', 'yearly', 'monthly', 'daily')),
    -- An IANA name, fixed once the series has handed out a number.
    timezone   TEXT NOT NULL DEFAULT 'UTC',
    -- The first number of each period not yet begun.
    start_at   BIGINT NOT NULL DEFAULT 1 CHECK (start_at >= 1),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, series)
);
INSERT INTO series (tenant_id, series, format, created_at)
SELECT tenant_id, series, format, created_at FROM counters;

-- What a request id's numbers read: the template and the date they were
-- rendered with, whatever the series' template becomes later.
ALTER TABLE request_ids
    ADD COLUMN period TEXT COLLATE "C" NOT NULL DEFAULT '',
    ADD COLUMN format TEXT,
    ADD COLUMN date   DATE;
UPDATE request_ids k SET format = c.format, date = (k.created_at AT TIME ZONE 'UTC')::date
FROM counters c WHERE c.tenant_id = k.tenant_id AND c.series = k.series;

-- The ledger keeps the text of every range too, by period.
ALTER TABLE allocations
    ADD COLUMN period TEXT COLLATE "C" NOT NULL DEFAULT '',
    ADD COLUMN format TEXT,
    ADD COLUMN date   DATE;
UPDATE allocations a SET format = c.format, date = (a.created_at AT TIME ZONE 'UTC')::date
FROM counters c WHERE c.tenant_id = a.tenant_id AND c.series = a.series;
ALTER TABLE allocations
    ALTER COLUMN format SET NOT NULL,
    ALTER COLUMN date SET NOT NULL,
    DROP CONSTRAINT allocations_pkey,
    ADD PRIMARY KEY (tenant_id, series, period, first_value);

-- One counter per period. `base` is the value the period started from
-- (start_at - 1 when it began): numbers above it were handed out or skipped.
ALTER TABLE counters
    ADD COLUMN period TEXT COLLATE "C" NOT NULL DEFAULT '',
    ADD COLUMN base   BIGINT NOT NULL DEFAULT 0,
    DROP COLUMN format,
    DROP CONSTRAINT counters_pkey,
    ADD PRIMARY KEY (tenant_id, series, period),
    ADD FOREIGN KEY (tenant_id, series) REFERENCES series;

-- Raised by an allocation statement whose plan assumed a series' reset or
-- time zone that has changed since: it rolls back whole, and the allocator
-- reads the series again.
CREATE FUNCTION series_changed() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a series of this batch was configured anew' USING ERRCODE = 'NB002';
END
$$;
