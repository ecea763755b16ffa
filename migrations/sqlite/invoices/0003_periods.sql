-- Numbers from a series that resets start again every period, so a number is
-- unique per (tenant, period); the formatted number stays unique per tenant.
-- `issue_date` (YYYY-MM-DD) is the date the number was allocated for. SQLite
-- cannot drop a table constraint: the table is rebuilt.
CREATE TABLE invoices_by_period (
    -- UUID, hyphenated.
    id             TEXT PRIMARY KEY NOT NULL,
    tenant_id      TEXT NOT NULL,
    period         TEXT NOT NULL,
    number         INTEGER NOT NULL CHECK (number > 0),
    invoice_number TEXT NOT NULL,
    issue_date     TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    client_name    TEXT NOT NULL,
    client_email   TEXT NOT NULL,
    client_phone   TEXT NOT NULL,
    client_address TEXT NOT NULL,
    -- YYYY-MM-DD.
    due_date       TEXT NOT NULL,
    notes          TEXT NOT NULL,
    currency       TEXT NOT NULL,
    -- Invoices are written once: their items are stored as one JSON document.
    line_items     TEXT NOT NULL,
    -- Exact decimal, as text: SQLite has no decimal type.
    total          TEXT NOT NULL,
    -- RFC 3339, UTC.
    created_at     TEXT NOT NULL,
    -- The caller's request id of the CreateInvoice that stored the invoice.
    request_id     TEXT,
    -- Either constraint failing means the allocated number is already used:
    -- the writer allocates another.
    UNIQUE (tenant_id, invoice_number),
    UNIQUE (tenant_id, period, number)
) STRICT;
INSERT INTO invoices_by_period
SELECT id, tenant_id, '', number, invoice_number, substr(created_at, 1, 10), client_id,
       client_name, client_email, client_phone, client_address, due_date, notes, currency,
       line_items, total, created_at, request_id
FROM invoices;
DROP TABLE invoices;
ALTER TABLE invoices_by_period RENAME TO invoices;
CREATE UNIQUE INDEX invoices_tenant_request_id_key ON invoices (tenant_id, request_id)
    WHERE request_id IS NOT NULL;
