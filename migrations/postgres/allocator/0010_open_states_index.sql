-- Numbers by state, leaving out the confirmed: a confirmation then writes
-- its row's new version with one index entry (its key) instead of two.
-- Confirmed is the state most rows end in, so listing it reads the key in
-- number order and skips the few rows of other states.
DROP INDEX number_states_by_state;
CREATE INDEX number_states_by_state ON number_states (tenant_id, series, period, state, number)
    WHERE state <> 'confirmed';
