-- The numbers a reissuing series may take again, in number order: the
-- lowest is read without sorting every released and reserved number of the
-- period.
CREATE INDEX number_states_given_back ON number_states (tenant_id, series, period, number)
    WHERE state IN ('released', 'reserved');
