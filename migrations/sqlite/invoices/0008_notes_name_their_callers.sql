-- The invoices of every call that noted the reservation since the note was
-- made (the one that made it, then each repeat of the call that noted it
-- again), separated by spaces. An insert is stored under its note only if
-- its invoice is among them: a call whose note reconciliation took over,
-- gave the number back and deleted, and a repeat of the call then made
-- afresh, cannot store its invoice under the fresh note.
ALTER TABLE pending_numbers ADD COLUMN noted_by TEXT NOT NULL DEFAULT '';
UPDATE pending_numbers SET noted_by = invoice_id;
