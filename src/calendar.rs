//! Calendar days as both services read them: `YYYY-MM-DD`, strictly.

use chrono::NaiveDate;

/// Reads a document date: `YYYY-MM-DD`, empty meaning none.
///
/// # Errors
/// Anything else.
pub fn parse_date(raw: &str) -> Result<Option<NaiveDate>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    parse_day(raw).map(Some)
}

/// Parses a `YYYY-MM-DD` day.
///
/// # Errors
/// Anything but a real calendar day in exactly that form.
pub fn parse_day(raw: &str) -> Result<NaiveDate, String> {
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !shaped {
        return Err("must be a date as YYYY-MM-DD".into());
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| "is not a day of the calendar".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_dates_are_iso_days_or_empty() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(parse_date("").unwrap(), None);
        assert_eq!(parse_date("2026-02-28").unwrap(), Some(day(2026, 2, 28)));
        for bad in ["2026-02-30", "26-02-01", "2026/02/01", "2026-2-1x", " "] {
            assert!(parse_date(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
