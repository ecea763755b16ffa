-- The caller's request id of the CreateInvoice that stored the invoice: a
-- repeat of the call finds the invoice by it. Kept as long as the invoice.
ALTER TABLE invoices ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX invoices_tenant_request_id_key ON invoices (tenant_id, request_id)
    WHERE request_id IS NOT NULL;
