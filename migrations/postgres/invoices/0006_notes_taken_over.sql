-- Whether reconciliation has taken the note over: it settles the note's
-- number (confirms it to the invoice stored under it, or gives it back), and
-- from then on no invoice is stored under the note. A call's insert checks,
-- in its own statement, that its note still names its invoice and is not
-- taken over, and holds the note while it commits: so an invoice is never
-- stored under a number reconciliation has found unused and gives back,
-- however long the call took or whatever the writers' clocks say.
ALTER TABLE pending_numbers ADD COLUMN taken_over BOOLEAN NOT NULL DEFAULT FALSE;
