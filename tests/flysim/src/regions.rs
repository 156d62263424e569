//! The one table of regions: what a `region=` value may say and which regions
//! it covers. Used by the replay parser (is the value valid?), the planner (does
//! it cover flysim's region?) and the configuration (is the region a code?).

/// The US regions (`us` and `usa` cover the same ones).
const US: &[&str] = &[
    "atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc",
];

/// Region aliases and the region codes they cover. Approximate: Fly does not
/// publish the lists, and flysim runs one region, so only membership matters.
const AREAS: &[(&str, &[&str])] = &[
    ("us", US),
    ("usa", US),
    (
        "na",
        &[
            "atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc",
            "yul", "yyz", "qro",
        ],
    ),
    (
        "eu",
        &["ams", "arn", "cdg", "fra", "lhr", "mad", "otp", "waw"],
    ),
    ("sa", &["bog", "eze", "gdl", "gig", "gru", "scl"]),
    ("apac", &["bom", "hkg", "nrt", "sin", "syd"]),
];

/// The alias that covers every region.
const ANY: &str = "any";

/// Whether `s` has the shape of a region code: three lowercase ASCII letters.
pub(crate) fn is_code(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_lowercase())
}

/// Whether `s` may appear in a `region=` list: a region code or an alias.
pub(crate) fn is_valid(s: &str) -> bool {
    is_code(s) || s == ANY || AREAS.iter().any(|(alias, _)| *alias == s)
}

/// Whether the `region=` entry `spec` (a code or an alias) covers `region`.
pub(crate) fn covers(spec: &str, region: &str) -> bool {
    spec == ANY
        || spec == region
        || AREAS
            .iter()
            .any(|(alias, codes)| *alias == spec && codes.contains(&region))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_cover_their_regions() {
        assert!(covers("any", "syd"));
        assert!(covers("iad", "iad"));
        assert!(covers("us", "iad"));
        assert!(covers("usa", "sjc"));
        assert!(covers("na", "yyz"));
        assert!(!covers("us", "yyz"));
        assert!(covers("eu", "ams"));
        assert!(!covers("eu", "iad"));
        assert!(!covers("ord", "iad"));
    }

    #[test]
    fn valid_entries_are_codes_or_aliases() {
        for ok in ["iad", "any", "us", "usa", "na", "eu", "sa", "apac"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "IAD", "iadx", "europe", "a1b"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
