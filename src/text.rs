//! What free text may hold, wherever it is stored (an invoice's names and
//! notes, a number's reference or reason, a counter's reason): text that shows
//! as it is stored.

use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Zero-width non-joiner and joiner: they shape joining scripts (Persian,
/// Indic), so they are kept between two letters of such a script.
const JOINERS: [char; 2] = ['\u{200C}', '\u{200D}'];

/// Variation selectors, which pick a glyph of the character before them:
/// an emoji's or an ideograph's (U+FE00–U+FE0F, U+E0100–U+E01EF), a
/// Mongolian letter's (U+180B–U+180D, U+180F).
fn selects_a_variant(c: char) -> bool {
    matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' | '\u{180B}'..='\u{180D}' | '\u{180F}')
}

/// Characters that show as nothing, outside the format characters: the rest
/// of Unicode's default-ignorable code points (the combining grapheme
/// joiner, Hangul fillers, Khmer inherent vowels, variation selectors, and
/// the code points kept for more of them).
fn ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{034F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{2065}'
            | '\u{3164}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{E0000}'..='\u{E0FFF}'
    ) || selects_a_variant(c)
}

/// Checks free text: at most `max` characters, not blank when `required`, and
/// nothing that would make it show other than it is stored:
/// - no control characters but line breaks and tabs (PostgreSQL cannot store
///   a NUL);
/// - no invisible format characters: bidirectional overrides, embeddings,
///   isolates and marks (which reorder what is shown), zero-width spaces, word
///   joiners, byte-order marks, soft hyphens. The zero-width (non-)joiner is
///   kept only between two letters (or marks) outside ASCII, where scripts
///   need it;
/// - none of the other characters Unicode says show as nothing (its default
///   ignorable code points: Hangul fillers, the combining grapheme joiner),
///   but a variation selector right after a character outside ASCII (an
///   emoji's, an ideograph's, a Mongolian letter's), which picks its glyph,
///   or in a keycap (a digit, `#` or `*`, the selector, U+20E3).
///
/// # Errors
/// A description of what is wrong, for a field violation.
pub fn check(raw: &str, max: usize, required: bool) -> Result<String, String> {
    if required && raw.trim().is_empty() {
        let what = if raw.is_empty() { "empty" } else { "blank" };
        return Err(format!("must not be {what}"));
    }
    if raw.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    // Printable ASCII, the common case, holds nothing to look up.
    if raw
        .bytes()
        .all(|b| b.is_ascii() && (!b.is_ascii_control() || matches!(b, b'\n' | b'\r' | b'\t')))
    {
        return Ok(raw.to_owned());
    }
    let chars: Vec<char> = raw.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
            return Err("must not contain control characters".into());
        }
        if ignorable(c) {
            // After an emoji or an ideograph; or a keycap's digit, `#` or
            // `*`, drawn in its key by the enclosing keycap after it.
            let base = |before: char| !before.is_ascii() && !ignorable(before);
            let keycap = |before: char| {
                matches!(before, '0'..='9' | '#' | '*') && chars.get(i + 1) == Some(&'\u{20E3}')
            };
            let selects = selects_a_variant(c)
                && i > 0
                && chars
                    .get(i - 1)
                    .is_some_and(|&before| base(before) || keycap(before));
            if !selects {
                return Err(invisible(c, i));
            }
        } else if c.general_category() == GeneralCategory::Format {
            let letter = |at: Option<&char>| {
                at.is_some_and(|c| {
                    !c.is_ascii()
                        && matches!(
                            c.general_category_group(),
                            GeneralCategoryGroup::Letter | GeneralCategoryGroup::Mark
                        )
                })
            };
            let joins = JOINERS.contains(&c)
                && i > 0
                && letter(chars.get(i - 1))
                && letter(chars.get(i + 1));
            if !joins {
                return Err(invisible(c, i));
            }
        }
    }
    Ok(raw.to_owned())
}

/// What a field violation says of `c`, the `i`th character (from 0).
fn invisible(c: char, i: usize) -> String {
    format!(
        "must not contain invisible formatting characters (U+{:04X} at character {})",
        u32::from(c),
        i + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_shows_as_stored_is_kept() {
        for good in [
            "Globex Corporation",
            "Müller & Söhne\nHauptstraße 1\tBerlin",
            "שלום עולם",
            "مرحبا",
            // Persian "I want", with the non-joiner its spelling needs.
            "می\u{200C}خواهم",
            "देवनागरी क्‍ष",
            // Emoji and ideographs with the variation selector of a glyph,
            // keycaps.
            "Thanks \u{2764}\u{FE0F}",
            "Press 1\u{FE0F}\u{20E3} or #\u{FE0F}\u{20E3}",
            "\u{845B}\u{E0100}",
            "",
        ] {
            assert_eq!(check(good, 100, false).as_deref(), Ok(good), "{good:?}");
        }
    }

    #[test]
    fn text_that_could_show_otherwise_is_refused() {
        for bad in [
            "Glo\0bex",
            "bell\u{7}",
            "del\u{7F}",
            "c1\u{85}",
            // Right-to-left override (the "Trojan Source" trick), embeddings,
            // isolates, marks.
            "invoice\u{202E}fdp.exe",
            "\u{202A}x",
            "x\u{2066}y\u{2069}",
            "x\u{200F}",
            "x\u{061C}",
            // Zero-width space, word joiner, byte-order mark, soft hyphen.
            "Glo\u{200B}bex",
            "Glo\u{2060}bex",
            "\u{FEFF}Globex",
            "Glo\u{AD}bex",
            // A joiner where no script needs one.
            "Glo\u{200D}bex",
            "\u{200C}",
            "می\u{200C}",
            // Characters that show as nothing but are no format characters:
            // the combining grapheme joiner, Hangul fillers, a variation
            // selector after ASCII or after nothing, a tag.
            "INV\u{034F}-001",
            "INV\u{3164}-001",
            "\u{115F}",
            "INV\u{FFA0}",
            "INV\u{FE0F}-001",
            "1\u{FE0F}-001",
            "\u{FE0F}",
            "\u{2764}\u{FE0F}\u{FE0F}",
            "x\u{E0041}",
            "x\u{17B4}",
        ] {
            assert!(check(bad, 100, false).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(check("   ", 10, true), Err("must not be blank".into()));
        assert_eq!(check("", 10, true), Err("must not be empty".into()));
        assert!(check("abc", 2, false).is_err());
    }
}
