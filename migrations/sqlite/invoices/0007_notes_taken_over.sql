-- Whether reconciliation has taken the note over (0 or 1): it settles the
-- note's number (confirms it to the invoice stored under it, or gives it
-- back), and from then on no invoice is stored under the note. A call's
-- insert checks, in its own statement, that its note still names its invoice
-- and is not taken over: so an invoice is never stored under a number
-- reconciliation has found unused and gives back, however long the call
-- took or whatever the writers' clocks say.
ALTER TABLE pending_numbers ADD COLUMN taken_over INTEGER NOT NULL DEFAULT 0
    CHECK (taken_over IN (0, 1));
