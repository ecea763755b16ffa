-- A series' reservations by the end of their lease: a reissuing series
-- takes a number whose lease ended (not yet swept) without reading those
-- still held. Its lowest released number is the first of its state in
-- number_states_by_state, so the index of numbers given back, which listed
-- every reservation held, goes.
CREATE INDEX number_states_leases ON number_states (tenant_id, series, period, expires_at)
    WHERE state = 'reserved';
DROP INDEX number_states_given_back;
