-- Numbers reserved for an invoice not stored yet. The insert of the invoice
-- deletes its row; a row left behind by a call that died names a number to
-- give back.
CREATE TABLE held_numbers (
    tenant_id   TEXT NOT NULL,
    period      TEXT NOT NULL,
    number      INTEGER NOT NULL,
    -- RFC 3339, UTC.
    reserved_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, period, number)
) STRICT, WITHOUT ROWID;
CREATE INDEX held_numbers_by_age ON held_numbers (reserved_at);

-- Whether the invoice's number is settled with the allocator (0 or 1):
-- confirmed with the invoice's id, or found not to be one it handed out
-- (imported, seeded) or one it refuses to confirm (logged). Invoices stored
-- before are settled by reconciliation.
ALTER TABLE invoices ADD COLUMN number_settled INTEGER NOT NULL DEFAULT 0
    CHECK (number_settled IN (0, 1));
CREATE INDEX invoices_unsettled ON invoices (created_at) WHERE number_settled = 0;
