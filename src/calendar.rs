//! Calendar days as both services read them: `YYYY-MM-DD`, strictly.

use chrono::NaiveDate;

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
