//! Calendar days as both services read them (`YYYY-MM-DD`, strictly), and
//! the periods a series that resets counts in.

use chrono::{Datelike, NaiveDate};

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

/// Checks that `raw` is a period as some series shows it: `""`, `"2026"`,
/// `"2026-11"` or `"2026-11-29"`.
///
/// # Errors
/// Anything else.
pub fn check_period(raw: &str) -> Result<(), String> {
    let date = match raw.len() {
        0 => return Ok(()),
        4 => format!("{raw}-01-01"),
        7 => format!("{raw}-01"),
        _ => raw.to_owned(),
    };
    let shown = NaiveDate::parse_from_str(&date, "%Y-%m-%d")
        .ok()
        .map(|date| [Reset::Yearly, Reset::Monthly, Reset::Daily].map(|reset| reset.period(date)));
    if shown.is_some_and(|periods| periods.iter().any(|period| period == raw)) {
        Ok(())
    } else {
        Err(format!(
            "{raw:?} is not a period: empty for a series that never resets, else YYYY, YYYY-MM or YYYY-MM-DD"
        ))
    }
}

/// When a periodic series starts counting again from its first number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Never: one counter for all time.
    Never,
    /// Every calendar year.
    Yearly,
    /// Every calendar month.
    Monthly,
    /// Every day.
    Daily,
}

impl Reset {
    /// The reset as stored and said: `never`, `yearly`, `monthly` or
    /// `daily`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Yearly => "yearly",
            Self::Monthly => "monthly",
            Self::Daily => "daily",
        }
    }

    /// Reads a stored reset.
    ///
    /// # Errors
    /// Anything but the names [`Reset::name`] gives.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "never" => Ok(Self::Never),
            "yearly" => Ok(Self::Yearly),
            "monthly" => Ok(Self::Monthly),
            "daily" => Ok(Self::Daily),
            _ => Err(format!("{name:?} is not a reset")),
        }
    }

    /// Whether `period`, a period as some series shows it
    /// ([`check_period`]), is one this reset makes: empty for a series that
    /// never resets, else a year, a month or a day.
    #[must_use]
    pub fn makes(self, period: &str) -> bool {
        let len = match self {
            Self::Never => 0,
            Self::Yearly => 4,
            Self::Monthly => 7,
            Self::Daily => 10,
        };
        period.len() == len
    }

    /// The period `date` falls in, as a series shows it: `""` for a series
    /// that never resets, `"2026"`, `"2026-11"` or `"2026-11-29"`.
    #[must_use]
    pub fn period(self, date: NaiveDate) -> String {
        match self {
            Self::Never => String::new(),
            Self::Yearly => format!("{:04}", date.year()),
            Self::Monthly => format!("{:04}-{:02}", date.year(), date.month()),
            Self::Daily => date.format("%Y-%m-%d").to_string(),
        }
    }

    /// Checks a document's date against `today`: it may lie in any earlier
    /// period (a backdated document), but not after the end of the period
    /// that follows today's (for a series that never resets: after the end
    /// of next year).
    ///
    /// # Errors
    /// The date is too far ahead, and the latest date accepted.
    pub fn check_date(self, date: NaiveDate, today: NaiveDate) -> Result<(), String> {
        let latest = self.latest_date(today);
        if date > latest {
            let end = match self {
                Self::Never => "the end of next year",
                _ => "the end of the period after the current one",
            };
            return Err(format!("must not be after {latest}, {end}"));
        }
        Ok(())
    }

    /// Checks the date of a document to number as [`Reset::check_date`]
    /// does, and, for a series that resets, that it is no more than
    /// [`Self::YEARS_BACK`] years before today's year: with next year's, the
    /// years it numbers at any one time are a hundred, so that no two of
    /// them show the same two-digit year (`{yy}`), and a typo of the century
    /// is caught. (The window moves with today: numbers a century apart,
    /// numbered a year or more apart, can show the same `{yy}`.)
    ///
    /// # Errors
    /// The date is too far ahead or back, and the latest or earliest date
    /// accepted.
    pub fn check_new_date(self, date: NaiveDate, today: NaiveDate) -> Result<(), String> {
        self.check_date(date, today)?;
        let earliest_year = today.year() - Self::YEARS_BACK;
        if self != Self::Never && date.year() < earliest_year {
            return Err(format!(
                "must not be before {earliest_year}-01-01: a series that resets numbers a \
                 hundred years, so that no two of its periods show the same two-digit year"
            ));
        }
        Ok(())
    }

    /// How many years before today's a series that resets numbers dates of.
    pub const YEARS_BACK: i32 = 98;

    /// The last day of the period after today's.
    fn latest_date(self, today: NaiveDate) -> NaiveDate {
        let first_of = |year: i32, month: u32| {
            NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MAX)
        };
        match self {
            // The end of next year.
            Self::Never | Self::Yearly => first_of(today.year() + 2, 1).pred_opt(),
            // The end of next month.
            Self::Monthly => {
                let months = today.year() * 12 + i32::try_from(today.month0()).unwrap_or(0) + 2;
                first_of(
                    months.div_euclid(12),
                    months.rem_euclid(12).unsigned_abs() + 1,
                )
                .pred_opt()
            }
            Self::Daily => today.succ_opt(),
        }
        .unwrap_or(NaiveDate::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_as_series_show_them() {
        for good in ["", "2026", "2026-03", "2026-03-31", "0001"] {
            assert_eq!(check_period(good), Ok(()), "{good:?}");
        }
        for bad in [
            "26",
            "2026-3",
            "2026-13",
            "2026-02-30",
            "2026/03",
            " 2026",
            "never",
        ] {
            assert!(check_period(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn document_dates_are_iso_days_or_empty() {
        assert_eq!(parse_date("").unwrap(), None);
        assert_eq!(parse_date("2026-02-28").unwrap(), Some(day(2026, 2, 28)));
        for bad in ["2026-02-30", "26-02-01", "2026/02/01", "2026-2-1x", " "] {
            assert!(parse_date(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn periods_are_named_by_the_date_they_hold() {
        let on = day(2026, 11, 29);
        assert_eq!(Reset::Never.period(on), "");
        assert_eq!(Reset::Yearly.period(on), "2026");
        assert_eq!(Reset::Monthly.period(on), "2026-11");
        assert_eq!(Reset::Daily.period(on), "2026-11-29");
    }

    #[test]
    fn a_date_may_reach_into_the_next_period_but_no_further() {
        let today = day(2026, 12, 15);
        let accepts = |reset: Reset, date| reset.check_date(date, today).is_ok();
        // Backdated documents take their own period.
        assert!(accepts(Reset::Yearly, day(2019, 1, 1)));
        assert!(accepts(Reset::Yearly, day(2027, 12, 31)));
        assert!(!accepts(Reset::Yearly, day(2028, 1, 1)));
        assert!(accepts(Reset::Never, day(2027, 12, 31)));
        assert!(!accepts(Reset::Never, day(2028, 1, 1)));
        // December's next month is January of the next year.
        assert!(accepts(Reset::Monthly, day(2027, 1, 31)));
        assert!(!accepts(Reset::Monthly, day(2027, 2, 1)));
        assert!(accepts(Reset::Daily, day(2026, 12, 16)));
        assert!(!accepts(Reset::Daily, day(2026, 12, 17)));
        let refusal = Reset::Monthly
            .check_date(day(2027, 3, 1), today)
            .unwrap_err();
        assert!(
            refusal.contains("2027-01-31, the end of the period after"),
            "{refusal}"
        );
        // A series that never resets has no periods to speak of.
        let refusal = Reset::Never.check_date(day(2028, 1, 1), today).unwrap_err();
        assert!(
            refusal.ends_with("2027-12-31, the end of next year"),
            "{refusal}"
        );
    }

    /// A series that resets numbers the dates of a hundred years, 1928 to
    /// 2027 in 2026: none two of them a century apart, as `{yy}` would show
    /// alike. One that never resets numbers any date back.
    #[test]
    fn a_series_that_resets_numbers_no_date_a_century_back() {
        let today = day(2026, 12, 15);
        for reset in [Reset::Yearly, Reset::Monthly, Reset::Daily] {
            assert!(
                reset.check_new_date(day(1928, 1, 1), today).is_ok(),
                "{reset:?}"
            );
            let refusal = reset.check_new_date(day(1927, 12, 31), today).unwrap_err();
            assert!(refusal.contains("1928-01-01"), "{refusal}");
            // Its counters may be read and raised for any date back.
            assert!(reset.check_date(day(1900, 1, 1), today).is_ok());
            // Ahead as before.
            assert!(reset.check_new_date(day(2028, 1, 1), today).is_err());
        }
        assert!(Reset::Never.check_new_date(day(1900, 1, 1), today).is_ok());
    }
}
