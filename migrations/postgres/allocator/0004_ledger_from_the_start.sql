-- Numbers handed out before the ledger was kept (databases created before
-- 0002) have no range. Record each period's first numbers up to its first
-- range as handed out, so that an audit accounts for every number.
INSERT INTO allocations
    (tenant_id, series, period, first_value, count, kind, reason, request_id, format, date, created_at)
SELECT c.tenant_id, c.series, c.period, c.base + 1,
       COALESCE(MIN(a.first_value) - 1, c.last_value) - c.base,
       'allocate', 'handed out before the ledger was kept', NULL,
       s.format, (c.created_at AT TIME ZONE 'UTC')::date, c.created_at
FROM counters c
JOIN series s ON s.tenant_id = c.tenant_id AND s.series = c.series
LEFT JOIN allocations a
       ON a.tenant_id = c.tenant_id AND a.series = c.series AND a.period = c.period
GROUP BY c.tenant_id, c.series, c.period, c.base, c.last_value, c.created_at, s.format
HAVING COALESCE(MIN(a.first_value) - 1, c.last_value) > c.base;
