CREATE TABLE invoices (
    -- UUID, hyphenated.
    id             TEXT PRIMARY KEY NOT NULL,
    tenant_id      TEXT NOT NULL,
    number         INTEGER NOT NULL CHECK (number > 0),
    invoice_number TEXT NOT NULL,
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
    -- Either constraint failing means the allocated number is already used:
    -- the writer allocates another.
    UNIQUE (tenant_id, invoice_number),
    UNIQUE (tenant_id, number)
) STRICT;
