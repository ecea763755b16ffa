-- The ranges skipped by an advance, few among many handed out: a listing
-- of the numbers skipped reads these alone.
CREATE INDEX allocations_advances ON allocations (tenant_id, series, period, first_value)
    WHERE kind = 'advance';
