//! The allocator's value types: what a series name, a count and a number
//! format may be, a series as stored and a number as handed out.

use std::{fmt, str::FromStr};

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

/// A number template such as `INV-{number:03}`: literal text around one
/// `{number}` or `{number:0W}` placeholder, W being a minimum width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberFormat {
    template: String,
    prefix: String,
    width: usize,
    suffix: String,
}

impl NumberFormat {
    /// The default template of every series.
    pub const DEFAULT: &'static str = "INV-{number:03}";
    /// Longest accepted template, in characters.
    pub const MAX_LEN: usize = 64;

    /// The template as written.
    #[must_use]
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Renders a number: `INV-{number:03}` gives `INV-007`, `INV-999`, `INV-1000`.
    #[must_use]
    pub fn render(&self, value: i64) -> String {
        format!(
            "{}{value:0width$}{}",
            self.prefix,
            self.suffix,
            width = self.width
        )
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

    fn from_str(template: &str) -> Result<Self, Self::Err> {
        const HINT: &str =
            "expected literal text around one {number} or {number:0W}, e.g. INV-{number:03}";
        if template.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        let (prefix, rest) = template.split_once('{').ok_or(HINT)?;
        let (placeholder, suffix) = rest.split_once('}').ok_or(HINT)?;
        if prefix.contains('}')
            || suffix.contains(['{', '}'])
            || prefix.chars().chain(suffix.chars()).any(char::is_control)
        {
            return Err(HINT.into());
        }
        let width = match placeholder {
            "number" => 0,
            _ => placeholder
                .strip_prefix("number:0")
                .filter(|digits| {
                    !digits.is_empty()
                        && digits.len() <= 2
                        && digits.bytes().all(|b| b.is_ascii_digit())
                })
                .and_then(|digits| digits.parse::<usize>().ok())
                .filter(|width| *width <= 19)
                .ok_or(HINT)?,
        };
        Ok(Self {
            template: template.to_owned(),
            prefix: prefix.to_owned(),
            width,
            suffix: suffix.to_owned(),
        })
    }
}

impl fmt::Display for NumberFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

/// A series as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Owner of the series.
    pub tenant_id: String,
    /// Series name.
    pub name: String,
    /// Last number handed out; 0 before the first.
    pub last_value: i64,
    /// Template its numbers are formatted with.
    pub format: String,
}

/// One allocated number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    /// The number.
    pub value: i64,
    /// The number rendered with the series' format.
    pub formatted: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format_pads_to_a_minimum_width() {
        let format = NumberFormat::default();
        assert_eq!(format.render(1), "INV-001");
        assert_eq!(format.render(999), "INV-999");
        assert_eq!(format.render(1000), "INV-1000");
    }

    #[test]
    fn formats_accept_one_placeholder_with_text_around_it() {
        let plain: NumberFormat = "{number}".parse().unwrap();
        assert_eq!(plain.render(42), "42");
        let wide: NumberFormat = "CN/{number:06}/2026".parse().unwrap();
        assert_eq!(wide.render(42), "CN/000042/2026");
    }

    #[test]
    fn formats_reject_anything_else() {
        for bad in [
            "INV-",
            "{num}",
            "{number:3}",
            "{number:0}",
            "{number:0x}",
            "{number}{number}",
            "a}{number}",
            "{number:099}",
            "{number:020}",
            "{{number}}",
        ] {
            assert!(bad.parse::<NumberFormat>().is_err(), "{bad:?} was accepted");
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
