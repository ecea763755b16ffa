-- The unsettled invoices' index with the predicate the statements use
-- (`NOT number_settled`), which SQLite matches only as written: with
-- `number_settled = 0` here, reconciliation's read of unsettled invoices
-- scanned the whole table.
DROP INDEX invoices_unsettled;
CREATE INDEX invoices_unsettled ON invoices (created_at) WHERE NOT number_settled;
