//! Invoice rules: what each field may hold, exact totals, and the invoice as stored.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tenant::TenantId;

/// Most line items on one invoice.
pub const MAX_LINE_ITEMS: usize = 500;
/// Most decimal places of a quantity or unit price.
pub const MAX_DECIMAL_PLACES: u32 = 4;
// With these bounds every product stays below 10^18 and a 500-item total fits
// a Decimal's 96-bit mantissa at 8 decimal places: arithmetic never rounds.
/// Quantities are below this.
const QUANTITY_LIMIT: i64 = 10_000_000;
/// Unit prices are below this.
const UNIT_PRICE_LIMIT: i64 = 100_000_000_000;

/// Checks a free-text field; see [`crate::text::check`].
///
/// # Errors
/// A description of what is wrong, for a field violation.
pub fn text(raw: &str, max: usize, required: bool) -> Result<String, String> {
    crate::text::check(raw, max, required)
}

/// Checks an optional e-mail address: empty, or `local@domain` of at most 254 characters.
///
/// # Errors
/// A description of what is wrong.
pub fn email(raw: &str) -> Result<String, String> {
    let email = text(raw, 254, false)?;
    if email.is_empty() {
        return Ok(email);
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.contains(char::is_whitespace) =>
        {
            Ok(email)
        }
        _ => Err("must be an e-mail address such as billing@example.com".into()),
    }
}

/// Checks an optional phone number: digits, spaces and `+ - ( ) .`, at most 32 characters.
///
/// # Errors
/// A description of what is wrong.
pub fn phone(raw: &str) -> Result<String, String> {
    let phone = text(raw, 32, false)?;
    if phone
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'))
    {
        Ok(phone)
    } else {
        Err("may contain only digits, spaces and + - ( ) .".into())
    }
}

/// Parses a `YYYY-MM-DD` date.
///
/// # Errors
/// Anything but a real calendar date in that form.
pub fn due_date(raw: &str) -> Result<NaiveDate, String> {
    crate::calendar::parse_day(raw)
}

/// Checks an ISO 4217 currency code such as `EUR`: a currency in use, not
/// one of the codes ISO 4217 keeps for other things (`XXX` "no currency",
/// `XTS` for testing, `XAU` gold, `XDR` drawing rights, bond units), nor
/// one another has replaced (`HRK`, by `EUR`).
///
/// # Errors
/// An unknown code, one that is not a currency, or one no longer in use.
pub fn currency(raw: &str) -> Result<String, String> {
    match iso_currency::Currency::from_code(raw) {
        Some(currency) if currency.has_flag(iso_currency::Flag::Special) => Err(format!(
            "{raw} is not a currency ({}); use one such as EUR",
            currency.name()
        )),
        Some(currency) if let Some(successor) = currency.is_superseded() => Err(format!(
            "{raw} ({}) is no longer in use: {} replaced it",
            currency.name(),
            successor.code()
        )),
        Some(currency) => Ok(currency.code().to_owned()),
        None => Err("must be an ISO 4217 currency code, in capitals, such as EUR".into()),
    }
}

fn decimal(raw: &str, limit: i64) -> Result<Decimal, String> {
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || (raw.contains('.') && fraction.is_empty())
    {
        return Err("must be a decimal number such as 12.50".into());
    }
    if fraction.len() > MAX_DECIMAL_PLACES as usize {
        return Err(format!(
            "must have at most {MAX_DECIMAL_PLACES} decimal places"
        ));
    }
    let value = Decimal::from_str_exact(raw).map_err(|_| format!("must be less than {limit}"))?;
    if value >= Decimal::from(limit) {
        return Err(format!("must be less than {limit}"));
    }
    Ok(value)
}

/// Parses a quantity: greater than 0, at most 4 decimal places.
///
/// # Errors
/// A description of what is wrong.
pub fn quantity(raw: &str) -> Result<Decimal, String> {
    if raw.starts_with('-') {
        return Err("must be greater than 0".into());
    }
    let value = decimal(raw, QUANTITY_LIMIT)?;
    if value.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(value)
}

/// Parses a unit price: 0 or more, at most 4 decimal places.
///
/// # Errors
/// A description of what is wrong.
pub fn unit_price(raw: &str) -> Result<Decimal, String> {
    if raw.starts_with('-') {
        return Err("must not be negative".into());
    }
    decimal(raw, UNIT_PRICE_LIMIT)
}

/// Renders an amount exactly, with at least two decimal places: `150.00`, `0.9999`.
#[must_use]
pub fn amount(value: Decimal) -> String {
    let mut value = value.normalize();
    if value.scale() < 2 {
        value.rescale(2);
    }
    value.to_string()
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// What was sold.
    pub description: String,
    /// How many, greater than 0.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Price of one, 0 or more.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
}

/// Who is billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The caller's id of the client; may be empty.
    pub id: String,
    /// Name on the invoice; never empty.
    pub name: String,
    /// E-mail address; may be empty.
    pub email: String,
    /// Phone number; may be empty.
    pub phone: String,
    /// Postal address; may be empty.
    pub address: String,
}

/// A validated invoice waiting for its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoice {
    /// Owner.
    pub tenant_id: TenantId,
    /// Who is billed.
    pub client: Client,
    /// The invoice's date, which picks the period of its number; `None`:
    /// today in the invoice series' time zone.
    pub issue_date: Option<NaiveDate>,
    /// When payment is due.
    pub due_date: NaiveDate,
    /// Free text.
    pub notes: String,
    /// ISO 4217 code.
    pub currency: String,
    /// 1 to [`MAX_LINE_ITEMS`] items.
    pub line_items: Vec<LineItem>,
}

impl NewInvoice {
    /// The exact sum of quantity × unit price.
    #[must_use]
    pub fn total(&self) -> Decimal {
        // The field limits keep every step exact (see QUANTITY_LIMIT).
        self.line_items
            .iter()
            .map(|item| item.quantity * item.unit_price)
            .sum()
    }

    /// Whether `stored` was created from this same request: every field the
    /// caller sent equal, values compared as values (`1.50` is `1.5`). An
    /// issue date left empty matches the date the number was allocated for.
    #[must_use]
    pub fn same_as(&self, stored: &Invoice) -> bool {
        self.tenant_id.as_str() == stored.tenant_id
            && self.issue_date.is_none_or(|date| date == stored.issue_date)
            && self.client == stored.client
            && self.due_date == stored.due_date
            && self.notes == stored.notes
            && self.currency == stored.currency
            && self.line_items == stored.line_items
    }

    /// The invoice with its number, its id and its creation time.
    #[must_use]
    pub fn numbered(&self, number: Numbered, id: Uuid, now: DateTime<Utc>) -> Invoice {
        // Stored timestamps keep microseconds: drop the rest so the invoice
        // returned now equals the invoice read back later.
        let created_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        // The caller's date, if it falls in the number's period (the writer
        // gives back a number for another date that an earlier call under
        // the same request id reserved, so with a date it always does); else
        // the day the number was allocated for (without a date, today in
        // the series' time zone), or, for a number handed out again, the
        // day it reads with.
        let issue_date = self
            .issue_date
            .filter(|date| date.to_string().starts_with(&number.period))
            .unwrap_or(number.date);
        Invoice {
            id,
            tenant_id: self.tenant_id.to_string(),
            number: number.value,
            invoice_number: number.formatted,
            period: number.period,
            issue_date,
            client: self.client.clone(),
            due_date: self.due_date,
            notes: self.notes.clone(),
            currency: self.currency.clone(),
            line_items: self.line_items.clone(),
            total: self.total(),
            created_at,
        }
    }
}

/// A number the allocator handed out for an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    /// The number.
    pub value: i64,
    /// The number as the invoice shows it, e.g. `INV-2026-00042`.
    pub formatted: String,
    /// Its period: `""` for a series that never resets.
    pub period: String,
    /// The date it was allocated for: the invoice's issue date.
    pub date: NaiveDate,
}

/// An invoice as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// Invoice id.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: String,
    /// Number from the allocator, unique in its period.
    pub number: i64,
    /// The number formatted, e.g. `INV-001`; unique per tenant.
    pub invoice_number: String,
    /// The period of the number: `""` for a series that never resets.
    pub period: String,
    /// The date the number was allocated for.
    pub issue_date: NaiveDate,
    /// Who is billed.
    pub client: Client,
    /// When payment is due.
    pub due_date: NaiveDate,
    /// Free text.
    pub notes: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The items.
    pub line_items: Vec<LineItem>,
    /// Exact sum of the items.
    pub total: Decimal,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_positive_with_at_most_four_places() {
        assert_eq!(quantity("1.5").unwrap().to_string(), "1.5");
        assert_eq!(quantity("0.0001").unwrap().to_string(), "0.0001");
        for bad in [
            "0", "0.0", "-1", "1.23456", "", "1.", ".5", "1e3", "+1", " 1", "abc", "10000000",
        ] {
            assert!(quantity(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn unit_prices_may_be_zero_but_not_negative() {
        assert!(unit_price("0").is_ok());
        assert_eq!(unit_price("100.00").unwrap().to_string(), "100.00");
        assert!(unit_price("99999999999.9999").is_ok());
        for bad in ["-0.01", "1.00001", "100000000000", "1,5"] {
            assert!(unit_price(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn totals_are_exact() {
        let item = |q: &str, p: &str| LineItem {
            description: "x".into(),
            quantity: quantity(q).unwrap(),
            unit_price: unit_price(p).unwrap(),
        };
        let invoice = |items| NewInvoice {
            tenant_id: TenantId::parse("t").unwrap(),
            client: Client {
                id: String::new(),
                name: "n".into(),
                email: String::new(),
                phone: String::new(),
                address: String::new(),
            },
            issue_date: None,
            due_date: due_date("2026-12-31").unwrap(),
            notes: String::new(),
            currency: "EUR".into(),
            line_items: items,
        };
        // 0.1 + 0.2 in floating point is 0.30000000000000004.
        assert_eq!(
            amount(invoice(vec![item("1", "0.1"), item("1", "0.2")]).total()),
            "0.30"
        );
        assert_eq!(
            amount(invoice(vec![item("1.5", "100.00")]).total()),
            "150.00"
        );
        assert_eq!(amount(invoice(vec![item("3", "0.3333")]).total()), "0.9999");
        let largest: Vec<_> = (0..MAX_LINE_ITEMS)
            .map(|_| item("9999999.9999", "99999999999.9999"))
            .collect();
        assert_eq!(
            amount(invoice(largest).total()),
            "499999999994999500000.000005",
        );
    }

    #[test]
    fn dates_and_currencies_are_checked() {
        assert!(due_date("2028-02-29").is_ok());
        for bad in [
            "2027-02-29",
            "2026-13-01",
            "26-01-01",
            "2026-1-1",
            "2026-01-01T00:00:00Z",
            "",
        ] {
            assert!(due_date(bad).is_err(), "{bad:?} was accepted");
        }
        // Currencies whose codes start with X are currencies all the same.
        for good in ["EUR", "XAF", "XOF", "XCD", "XPF"] {
            assert_eq!(currency(good).as_deref(), Ok(good));
        }
        for bad in ["eur", "EURO", "XYZ", "", "XXX", "XTS", "XAU", "XDR", "XBA"] {
            assert!(currency(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            currency("HRK"),
            Err("HRK (Croatian kuna) is no longer in use: EUR replaced it".into())
        );
    }

    #[test]
    fn contact_fields_are_checked() {
        assert!(email("").is_ok());
        assert!(email("billing@example.com").is_ok());
        for bad in ["billing", "@example.com", "a@", "a@b@c", "a b@c.d"] {
            assert!(email(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(phone("+1 (555) 010-0199").is_ok());
        assert!(phone("call me").is_err());
        assert!(text("  ", 10, true).is_err());
        assert!(text("ééé", 3, true).is_ok());
        assert!(text("éééé", 3, true).is_err());
        assert!(text("line one\nline two\tend", 100, true).is_ok());
        for bad in ["Glo\0bex", "bell\u{7}", "esc\u{1b}[31m"] {
            assert!(text(bad, 100, true).is_err(), "{bad:?} was accepted");
        }
    }
}
