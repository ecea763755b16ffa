-- Which call first used each request id, as `allocations.kind` says: a
-- repeat of the id by the other call is refused, never answered with a
-- number the first call holds differently.
ALTER TABLE request_ids ADD COLUMN kind TEXT NOT NULL DEFAULT 'allocate';
UPDATE request_ids SET kind = 'reserve'
WHERE EXISTS (SELECT 1 FROM allocations a
              WHERE a.tenant_id = request_ids.tenant_id
                AND a.request_id = request_ids.request_id
                AND a.kind = 'reserve')
   OR EXISTS (SELECT 1 FROM number_states s
              WHERE s.tenant_id = request_ids.tenant_id
                AND s.series = request_ids.series
                AND s.period = request_ids.period
                AND s.number = request_ids.first_value
                AND s.request_id = request_ids.request_id
                AND s.state = 'reserved');
