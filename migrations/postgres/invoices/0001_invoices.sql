CREATE TABLE invoices (
    id             UUID PRIMARY KEY,
    tenant_id      TEXT COLLATE "C" NOT NULL,
    number         BIGINT NOT NULL CHECK (number > 0),
    invoice_number TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    client_name    TEXT NOT NULL,
    client_email   TEXT NOT NULL,
    client_phone   TEXT NOT NULL,
    client_address TEXT NOT NULL,
    due_date       DATE NOT NULL,
    notes          TEXT NOT NULL,
    currency       TEXT NOT NULL,
    -- Invoices are written once: their items are stored as one document.
    line_items     JSONB NOT NULL,
    total          NUMERIC NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    -- Either constraint failing means the allocated number is already used:
    -- the writer allocates another.
    CONSTRAINT invoices_tenant_invoice_number_key UNIQUE (tenant_id, invoice_number),
    CONSTRAINT invoices_tenant_number_key UNIQUE (tenant_id, number)
);
