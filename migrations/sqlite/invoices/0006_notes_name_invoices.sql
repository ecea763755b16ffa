-- A pending note now lasts until the invoice's number is settled, not only
-- until the invoice is stored, and names the invoice the call stores under
-- the reserved number: reconciliation confirms a stored invoice's number by
-- that invoice, without repeating the reservation. Empty in notes written
-- before. An invoice stored with a note is stored settled (`number_settled`):
-- its note settles it; one stored without (imported) is settled by
-- reconciliation, as before.
ALTER TABLE pending_numbers ADD COLUMN invoice_id TEXT NOT NULL DEFAULT '';
