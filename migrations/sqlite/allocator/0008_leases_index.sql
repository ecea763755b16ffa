-- A series' reservations by the end of their lease: a reissuing series
-- takes a number whose lease ended (not yet swept) without reading those
-- still held.
CREATE INDEX number_states_leases ON number_states (tenant_id, series, period, expires_at)
    WHERE state = 'reserved';
