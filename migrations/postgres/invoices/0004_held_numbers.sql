-- Numbers reserved for an invoice not stored yet. The insert of the invoice
-- deletes its row; a row left behind by a call that died names a number to
-- give back.
CREATE TABLE held_numbers (
    tenant_id   TEXT COLLATE "C" NOT NULL,
    period      TEXT COLLATE "C" NOT NULL,
    number      BIGINT NOT NULL,
    reserved_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, period, number)
);
CREATE INDEX held_numbers_by_age ON held_numbers (reserved_at);

-- Whether the invoice's number is settled with the allocator: confirmed with
-- the invoice's id, or found not to be one it handed out (imported, seeded)
-- or one it refuses to confirm (logged). Invoices stored before are settled
-- by reconciliation.
ALTER TABLE invoices ADD COLUMN number_settled BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX invoices_unsettled ON invoices (created_at) WHERE NOT number_settled;
