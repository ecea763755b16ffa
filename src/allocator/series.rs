//! The allocator's value types: what a series name, a count and a number
//! format may be, a series as stored, a number as handed out, and how long
//! reservations are held.

use std::{
    fmt::{self, Write as _},
    str::FromStr,
    time::Duration,
};

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use crate::calendar::Reset;

/// A series name: 1–64 characters of `a–z 0–9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesName(String);

impl SeriesName {
    /// The series an empty name means.
    pub const DEFAULT: &'static str = "invoice";
    /// Longest accepted name, in characters.
    pub const MAX_LEN: usize = 64;

    /// Validates a series name; empty means [`SeriesName::DEFAULT`].
    ///
    /// # Errors
    /// A description of what is wrong, for a field violation.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(Self(Self::DEFAULT.to_owned()));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        {
            return Err("may contain only a-z 0-9 _ -".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SeriesName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many consecutive numbers one call takes: 1 to [`Count::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(u32);

impl Count {
    /// Most numbers one call may take.
    pub const MAX: u32 = 1000;

    /// Validates a requested count; 0 means 1.
    ///
    /// # Errors
    /// A count above [`Count::MAX`].
    pub fn parse(requested: u32) -> Result<Self, String> {
        match requested {
            0 => Ok(Self(1)),
            n if n <= Self::MAX => Ok(Self(n)),
            _ => Err(format!("must be at most {}", Self::MAX)),
        }
    }

    /// The count.
    #[must_use]
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A number template such as `INV-{year}-{number:05}`: literal text, exactly
/// one `{number}` or `{number:0N}` (N from 1 to 18, a minimum width), and any
/// of the date parts `{year}` (four digits), `{yy}`, `{month}` and `{day}`
/// (two digits); `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberFormat {
    template: String,
    parts: Vec<Part>,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Number { width: usize },
    Year,
    Yy,
    Month,
    Day,
}

impl NumberFormat {
    /// The default template of every series.
    pub const DEFAULT: &'static str = "INV-{number:03}";
    /// Longest accepted template, in characters.
    pub const MAX_LEN: usize = 64;
    /// Widest `{number:0N}`.
    pub const MAX_WIDTH: usize = 18;

    /// The template as written.
    #[must_use]
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Renders a number handed out on `date`: `INV-{number:03}` gives
    /// `INV-007`, `INV-999`, `INV-1000`; `RE/{yy}/{number:04}` gives
    /// `RE/26/0042` in 2026.
    #[must_use]
    pub fn render(&self, value: i64, date: NaiveDate) -> String {
        let mut text = String::with_capacity(self.template.len() + 8);
        for part in &self.parts {
            // Writing to a String cannot fail.
            let _ = match part {
                Part::Text(literal) => {
                    text.push_str(literal);
                    Ok(())
                }
                Part::Number { width } => write!(text, "{value:0width$}"),
                Part::Year => write!(text, "{:04}", date.year()),
                Part::Yy => write!(text, "{:02}", date.year().rem_euclid(100)),
                Part::Month => write!(text, "{:02}", date.month()),
                Part::Day => write!(text, "{:02}", date.day()),
            };
        }
        text
    }

    /// Checks that no two numbers of a series resetting as `reset` would
    /// render alike: each period's numbers start again, so the text must
    /// name the period.
    ///
    /// # Errors
    /// Which date parts the template lacks.
    pub fn check_reset(&self, reset: Reset) -> Result<(), String> {
        let has = |wanted: &[Part]| self.parts.iter().any(|part| wanted.contains(part));
        let year = has(&[Part::Year, Part::Yy]);
        let (needs, missing) = match reset {
            Reset::Never => return Ok(()),
            Reset::Yearly => ("{year} or {yy}", !year),
            Reset::Monthly => ("{year} or {yy}, and {month}", !year || !has(&[Part::Month])),
            Reset::Daily => (
                "{year} or {yy}, {month} and {day}",
                !year || !has(&[Part::Month]) || !has(&[Part::Day]),
            ),
        };
        if missing {
            return Err(format!(
                "a series that resets {} must show {needs}, or two of its numbers would read alike",
                reset.name()
            ));
        }
        Ok(())
    }
}

impl Default for NumberFormat {
    fn default() -> Self {
        Self::DEFAULT
            .parse()
            .expect("the default template is valid")
    }
}

impl FromStr for NumberFormat {
    type Err = String;

    /// A template given now: text that shows as it is stored, read as
    /// [`NumberFormat::stored`] reads it.
    fn from_str(template: &str) -> Result<Self, Self::Err> {
        crate::text::check(template, Self::MAX_LEN, false)?;
        Self::stored(template)
    }
}

impl NumberFormat {
    /// A template as the database keeps it: checked as text when it was
    /// stored, by the rules of the release that stored it, and not again
    /// (a rule added since would otherwise stop its series and the numbers
    /// it rendered), only read.
    ///
    /// # Errors
    /// A description of what is wrong.
    pub fn stored(template: &str) -> Result<Self, String> {
        // One line: free text may break lines, a number may not.
        if template.contains(['\n', '\r', '\t', '\u{2028}', '\u{2029}']) {
            return Err("must not contain control characters or line breaks".into());
        }
        let mut parts: Vec<Part> = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(at) = rest.find(['{', '}']) {
            text.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{") {
                text.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                text.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err("a lone } must be written }}".into());
            } else {
                let end = tail
                    .find('}')
                    .ok_or("a { opens a placeholder that is never closed; write {{ for a brace")?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(placeholder(&tail[1..end])?);
                rest = &tail[end + 1..];
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let numbers = parts
            .iter()
            .filter(|part| matches!(part, Part::Number { .. }))
            .count();
        if numbers != 1 {
            return Err(format!(
                "must hold exactly one {{number}} or {{number:0N}}, not {numbers}, e.g. INV-{{number:03}}"
            ));
        }
        Ok(Self {
            template: template.to_owned(),
            parts,
        })
    }
}

/// One placeholder, by the name between its braces.
fn placeholder(name: &str) -> Result<Part, String> {
    Ok(match name {
        "number" => Part::Number { width: 0 },
        "year" => Part::Year,
        "yy" => Part::Yy,
        "month" => Part::Month,
        "day" => Part::Day,
        _ => {
            let width = name
                .strip_prefix("number:0")
                .filter(|digits| {
                    !digits.is_empty() && digits.len() <= 2 && digits.bytes().all(|b| b.is_ascii_digit())
                })
                .and_then(|digits| digits.parse::<usize>().ok())
                .filter(|width| (1..=NumberFormat::MAX_WIDTH).contains(width))
                .ok_or_else(|| {
                    format!(
                        "{{{name}}} is not a placeholder: use {{number}}, {{number:0N}} (N from 1 to {}), {{year}}, {{yy}}, {{month}} or {{day}}",
                        NumberFormat::MAX_WIDTH
                    )
                })?;
            Part::Number { width }
        }
    })
}

impl fmt::Display for NumberFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

/// A series' time zone: an IANA name such as `Europe/Berlin`, checked
/// against the time-zone database. It says which day it is for the series:
/// the day that picks the period and the date its numbers show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    /// The zone of a series that names none.
    pub const UTC: Self = Self(chrono_tz::UTC);

    /// Validates an IANA time-zone name.
    ///
    /// # Errors
    /// The name is not in the time-zone database.
    pub fn parse(name: &str) -> Result<Self, String> {
        name.parse::<chrono_tz::Tz>().map(Self).map_err(|_| {
            format!("{name:?} is not an IANA time-zone name such as Europe/Berlin or UTC")
        })
    }

    /// The zone's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The date in this zone at `at`.
    #[must_use]
    pub fn date(self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.0).date_naive()
    }
}

/// How a series' days and periods are told: its reset and its time zone.
/// Fixed once the series has handed out a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    /// When the series starts again.
    pub reset: Reset,
    /// Which day it is for the series.
    pub zone: TimeZone,
}

impl Calendar {
    /// The calendar of a series configured with nothing.
    pub const DEFAULT: Self = Self {
        reset: Reset::Never,
        zone: TimeZone::UTC,
    };

    /// The date a call with document date `date` (none: today) reads or
    /// raises its series' counter for, and the period it falls in.
    ///
    /// # Errors
    /// A date past the period after today's, for the `date` field.
    pub fn place(
        self,
        date: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> Result<(NaiveDate, String), String> {
        self.place_by(date, now, Reset::check_date)
    }

    /// As [`Calendar::place`], for a call that numbers its document: a
    /// series that resets numbers no date more than a hundred years back
    /// ([`Reset::check_new_date`]).
    ///
    /// # Errors
    /// A date past the period after today's, or too far back, for the
    /// `date` field.
    pub fn place_new(
        self,
        date: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> Result<(NaiveDate, String), String> {
        self.place_by(date, now, Reset::check_new_date)
    }

    /// The date and its period, once `check` has accepted the date against
    /// today in the series' zone.
    fn place_by(
        self,
        date: Option<NaiveDate>,
        now: DateTime<Utc>,
        check: fn(Reset, NaiveDate, NaiveDate) -> Result<(), String>,
    ) -> Result<(NaiveDate, String), String> {
        let today = self.zone.date(now);
        let date = date.unwrap_or(today);
        check(self.reset, date, today)?;
        Ok((date, self.reset.period(date)))
    }
}

/// What a series does with a reserved number given back (released, or its
/// lease ended).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GapPolicy {
    /// The number is voided and never handed out again: a chronological
    /// series whose gaps are documented.
    #[default]
    Void,
    /// The number goes back to the series, and the next one-number call
    /// takes the lowest such number before a new one: a continuous series.
    Reissue,
}

impl GapPolicy {
    /// The policy as the store keeps it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Void => "void",
            Self::Reissue => "reissue",
        }
    }

    /// The policy the store keeps as `name`.
    ///
    /// # Errors
    /// An unknown name.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "void" => Ok(Self::Void),
            "reissue" => Ok(Self::Reissue),
            other => Err(format!("unknown gap policy {other:?}")),
        }
    }
}

/// How long reservations are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leases {
    /// The lease of a call that asks for none.
    pub default: Duration,
    /// The longest lease a call may ask for.
    pub max: Duration,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            default: Duration::from_mins(5),
            max: Duration::from_hours(24),
        }
    }
}

impl Leases {
    /// The shortest lease a call may ask for.
    pub const MIN: Duration = Duration::from_secs(1);

    /// The longest lease a server may allow (366 days, so "1y" is one): its
    /// end must stay a date both databases store and compare as a time.
    pub const CEILING: Duration = Duration::from_hours(24 * 366);

    /// The lease a call gets when it asks for `asked` (zero: the default).
    ///
    /// # Errors
    /// A lease under [`Leases::MIN`] or over the maximum.
    pub fn pick(&self, asked: Duration) -> Result<Duration, String> {
        if asked.is_zero() {
            return Ok(self.default);
        }
        if asked < Self::MIN {
            return Err(format!("must be at least {}s", Self::MIN.as_secs()));
        }
        if asked > self.max {
            return Err(format!(
                "must be at most {}s, this allocator's --max-lease",
                self.max.as_secs()
            ));
        }
        Ok(asked)
    }
}

/// A series' settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesConfig {
    /// The template of numbers allocated from now on.
    pub format: NumberFormat,
    /// Its reset and time zone.
    pub calendar: Calendar,
    /// The first number of every period not yet begun.
    pub start_at: i64,
    /// What becomes of a reserved number given back.
    pub gap_policy: GapPolicy,
}

impl SeriesConfig {
    /// The settings of a series nobody configured, numbered with `format`.
    #[must_use]
    pub fn unconfigured(format: NumberFormat) -> Self {
        Self {
            format,
            calendar: Calendar::DEFAULT,
            start_at: 1,
            gap_policy: GapPolicy::Void,
        }
    }
}

/// Why a series' settings were not changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A setting is not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A setting can no longer change: the series has handed out (or
    /// skipped) numbers.
    #[error("{field} cannot change once the series has handed out a number")]
    InUse {
        /// The request field that would change.
        field: &'static str,
    },
}

/// A series as `GetSeries` shows it: its settings and one period's counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Owner of the series.
    pub tenant_id: String,
    /// Series name.
    pub name: String,
    /// Its settings.
    pub config: SeriesConfig,
    /// The period shown: `""` for a series that never resets.
    pub period: String,
    /// Last number handed out or skipped in the period; `start_at - 1` before
    /// the first.
    pub last_value: i64,
}

/// One allocated number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    /// The number.
    pub value: i64,
    /// The number rendered with the series' format.
    pub formatted: String,
    /// The period it belongs to: `""` for a series that never resets.
    pub period: String,
    /// The date it reads with.
    pub date: NaiveDate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_the_default_or_within_bounds() {
        let leases = Leases::default();
        assert_eq!(leases.pick(Duration::ZERO), Ok(Duration::from_mins(5)));
        assert_eq!(
            leases.pick(Duration::from_secs(1)),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            leases.pick(Duration::from_hours(24)),
            Ok(Duration::from_hours(24))
        );
        assert!(leases.pick(Duration::from_millis(999)).is_err());
        assert!(
            leases
                .pick(Duration::from_hours(24) + Duration::from_secs(1))
                .is_err()
        );
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn default_format_pads_to_a_minimum_width() {
        let format = NumberFormat::default();
        let today = day(2026, 12, 2);
        assert_eq!(format.render(1, today), "INV-001");
        assert_eq!(format.render(999, today), "INV-999");
        assert_eq!(format.render(1000, today), "INV-1000");
    }

    #[test]
    fn formats_hold_one_number_date_parts_and_escaped_braces() {
        let on = day(2026, 3, 9);
        let render =
            |template: &str, value| template.parse::<NumberFormat>().unwrap().render(value, on);
        assert_eq!(render("{number}", 42), "42");
        assert_eq!(render("CN/{number:06}/2026", 42), "CN/000042/2026");
        assert_eq!(render("INV-{year}-{number:05}", 42), "INV-2026-00042");
        assert_eq!(render("RE/{yy}/{number:04}", 42), "RE/26/0042");
        assert_eq!(render("{year}{month}{day}-{number}", 7), "20260309-7");
        assert_eq!(render("{{{number}}}", 7), "{7}");
        assert_eq!(render("{number:018}", 1), "000000000000000001");
        assert_eq!(
            render(&format!("{}{{number}}", "é".repeat(56)), 1)
                .chars()
                .count(),
            57
        );
    }

    #[test]
    fn formats_reject_anything_else() {
        for bad in [
            "INV-",
            "{num}",
            "{number:3}",
            "{number:0}",
            "{number:0x}",
            "{number:019}",
            "{number}{number}",
            "{year}",
            "a}{number}",
            "{number:099}",
            "{{number}}",
            "{number",
            "{Year}{number}",
            "tab\t{number}",
            "INV\u{2028}{number}",
            "INV\u{2029}{number}",
        ] {
            assert!(bad.parse::<NumberFormat>().is_err(), "{bad:?} was accepted");
        }
        assert!(
            format!("{}{{number}}", "x".repeat(57))
                .parse::<NumberFormat>()
                .is_err()
        );
    }

    #[test]
    fn a_periodic_series_must_show_its_period() {
        let check =
            |template: &str, reset| template.parse::<NumberFormat>().unwrap().check_reset(reset);
        assert!(check("INV-{number}", Reset::Never).is_ok());
        assert!(check("INV-{number}", Reset::Yearly).is_err());
        assert!(check("INV-{yy}-{number}", Reset::Yearly).is_ok());
        assert!(check("INV-{year}-{number}", Reset::Monthly).is_err());
        assert!(check("{year}/{month}/{number}", Reset::Monthly).is_ok());
        assert!(check("{year}/{month}/{number}", Reset::Daily).is_err());
        assert!(check("{yy}{month}{day}-{number}", Reset::Daily).is_ok());
        let refusal = check("INV-{month}-{number}", Reset::Monthly).unwrap_err();
        assert!(refusal.contains("{year} or {yy}"), "{refusal}");
    }

    #[test]
    fn the_series_zone_says_which_day_it_is() {
        let berlin = TimeZone::parse("Europe/Berlin").unwrap();
        assert_eq!(berlin.name(), "Europe/Berlin");
        // 23:30 UTC on New Year's Eve is already 2027 in Berlin.
        let at: DateTime<Utc> = "2026-12-31T23:30:00Z".parse().unwrap();
        assert_eq!(TimeZone::UTC.date(at), day(2026, 12, 31));
        assert_eq!(berlin.date(at), day(2027, 1, 1));
        for bad in ["Europe/Springfield", "CET+1", "+01:00", ""] {
            assert!(TimeZone::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn series_names_default_and_validate() {
        assert_eq!(SeriesName::parse("").unwrap().as_str(), "invoice");
        assert!(SeriesName::parse("credit-note_2").is_ok());
        assert!(SeriesName::parse(&"a".repeat(65)).is_err());
        for bad in ["Invoice", "a b", "a.b", "ü"] {
            assert!(SeriesName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn count_zero_means_one_and_is_capped() {
        assert_eq!(Count::parse(0).unwrap().get(), 1);
        assert_eq!(Count::parse(1000).unwrap().get(), 1000);
        assert!(Count::parse(1001).is_err());
    }
}
