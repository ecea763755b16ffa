-- Reservations asked for invoices not stored yet, by the request id each was
-- asked with, written before the allocator is called. The call deletes its
-- row once the invoice is stored or the number given back; a row left by a
-- call that died names a reservation to settle: reconciliation repeats it
-- (same request id, same number) and confirms the number to the invoice
-- stored under it, or gives it back.
CREATE TABLE pending_numbers (
    tenant_id   TEXT NOT NULL,
    request_key TEXT NOT NULL,
    -- The invoice's date, YYYY-MM-DD, or empty for today.
    issue_date  TEXT NOT NULL,
    -- RFC 3339, UTC.
    since       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, request_key)
) STRICT, WITHOUT ROWID;
CREATE INDEX pending_numbers_by_age ON pending_numbers (since);

-- Whether the invoice's number is settled with the allocator (0 or 1):
-- confirmed with the invoice's id, or found not to be one it handed out
-- (imported, seeded) or one it refuses to confirm (logged). Invoices stored
-- before are settled by reconciliation.
ALTER TABLE invoices ADD COLUMN number_settled INTEGER NOT NULL DEFAULT 0
    CHECK (number_settled IN (0, 1));
CREATE INDEX invoices_unsettled ON invoices (created_at) WHERE number_settled = 0;
