//! Public suffixes: domains below which anyone can get a name of their own,
//! by registering it (`co.uk`, `com.au`: the list's ICANN section) or by
//! creating a site, an app or a bucket (`github.io`, `herokuapp.com`,
//! `s3.amazonaws.com`: its private section). A rule that allows every name
//! below one allows names an attacker can make.
//!
//! The Public Suffix List comes compiled in with the `psl` crate (2.1.247;
//! its maintainers republish it from the list's repository when the list
//! changes, and its patch number counts those releases). Nothing is
//! downloaded at run time.

use psl::Type;

/// Which part of the list a suffix is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Registries' own suffixes (`com`, `co.uk`): anyone may register below.
    Icann,
    /// Suffixes that companies submitted because their users create names
    /// below them (`github.io`, `herokuapp.com`).
    Private,
}

/// The public suffix that `name` (lower case, no trailing dot) is, or is
/// below, with its section. `None` when the list does not know the name's
/// top-level domain (`.test`, `.internal`).
pub fn suffix_of(name: &str) -> Option<(&str, Section)> {
    let s = psl::suffix(name.as_bytes())?;
    let section = match s.typ()? {
        Type::Icann => Section::Icann,
        Type::Private => Section::Private,
    };
    let len = s.as_bytes().len();
    Some((&name[name.len() - len..], section))
}

/// The section of the list `domain` is in, if `domain` is itself a public
/// suffix.
pub fn is_suffix(domain: &str) -> Option<Section> {
    suffix_of(domain).and_then(|(s, section)| (s == domain).then_some(section))
}

/// The section of the list, if a wildcard over `domain` (`*.domain`) allows
/// names that anyone can make: `domain` is a public suffix, or the list
/// makes every name directly below it one (its `*.compute.amazonaws.com`
/// kind of rule, seen by asking about a made-up label below `domain`).
pub fn wildcard_opens(domain: &str) -> Option<Section> {
    is_suffix(domain).or_else(|| is_suffix(&format!("egressd-made-up-label.{domain}")))
}

/// The private-section suffix that `name` is strictly below, if any: its
/// owner is whoever created it there, not the suffix's operator.
pub fn private_suffix_above(name: &str) -> Option<&str> {
    match suffix_of(name) {
        Some((s, Section::Private)) if s != name => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_both_sections() {
        assert_eq!(is_suffix("com"), Some(Section::Icann));
        assert_eq!(is_suffix("co.uk"), Some(Section::Icann));
        assert_eq!(is_suffix("com.au"), Some(Section::Icann));
        for private in [
            "github.io",
            "herokuapp.com",
            "vercel.app",
            "workers.dev",
            "s3.amazonaws.com",
            "blob.core.windows.net",
            "ngrok.io",
        ] {
            assert_eq!(is_suffix(private), Some(Section::Private), "{private}");
        }
        assert_eq!(wildcard_opens("co.uk"), Some(Section::Icann));
        assert_eq!(wildcard_opens("github.io"), Some(Section::Private));
        // Every name directly below it is a suffix (`*.compute.amazonaws.com`).
        assert_eq!(is_suffix("compute.amazonaws.com"), None);
        assert_eq!(
            wildcard_opens("compute.amazonaws.com"),
            Some(Section::Private)
        );
        assert_eq!(wildcard_opens("example.co.uk"), None);
        assert_eq!(wildcard_opens("cdn.model.test"), None);
        assert_eq!(is_suffix("example.co.uk"), None);
        assert_eq!(is_suffix("api.openai.com"), None);
        // A name the list does not know the top-level domain of.
        assert_eq!(is_suffix("model.test"), None);
        assert_eq!(suffix_of("api.model.test"), None);
    }

    #[test]
    fn names_under_a_private_suffix() {
        assert_eq!(private_suffix_above("someone.github.io"), Some("github.io"));
        assert_eq!(
            private_suffix_above("a.b.herokuapp.com"),
            Some("herokuapp.com")
        );
        assert_eq!(private_suffix_above("github.io"), None);
        assert_eq!(private_suffix_above("example.co.uk"), None);
        assert_eq!(private_suffix_above("api.model.test"), None);
    }
}
