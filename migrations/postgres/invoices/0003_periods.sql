-- Numbers from a series that resets start again every period, so a number is
-- unique per (tenant, period); the formatted number stays unique per tenant.
-- `issue_date` is the date the number was allocated for.
ALTER TABLE invoices
    ADD COLUMN period     TEXT COLLATE "C" NOT NULL DEFAULT '',
    ADD COLUMN issue_date DATE;
UPDATE invoices SET issue_date = (created_at AT TIME ZONE 'UTC')::date;
ALTER TABLE invoices
    ALTER COLUMN issue_date SET NOT NULL,
    DROP CONSTRAINT invoices_tenant_number_key,
    ADD CONSTRAINT invoices_tenant_period_number_key UNIQUE (tenant_id, period, number);
