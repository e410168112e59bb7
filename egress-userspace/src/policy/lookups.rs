//! How many names below a wildcard host rule may be looked up
//! (`lookups:` on a `*.domain` rule). Each name the agent asks for reaches
//! that domain's name servers whether or not it exists, so the names
//! themselves can carry data out; a wildcard therefore allows only so
//! many distinct names per window. Exact names are not counted.

use std::time::Duration;

use serde::Deserialize;

use super::budget::Window;

/// At most `names` distinct names per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lookups {
    pub names: u32,
    pub window: Duration,
}

/// A wildcard rule's limit when it sets none: enough for the hosts an
/// agent uses below one domain, a few KB of names at most.
pub const DEFAULT: Lookups = Lookups {
    names: 100,
    window: Duration::from_secs(600),
};

/// The most names a window may hold.
const MAX_NAMES: u32 = 100_000;

/// `lookups:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLookups {
    names: u32,
    per: Window,
}

impl TryFrom<RawLookups> for Lookups {
    type Error = String;
    fn try_from(r: RawLookups) -> Result<Lookups, String> {
        if r.names > MAX_NAMES {
            return Err(format!(
                "`lookups: {{names: {}}}`: at most {MAX_NAMES} names per window (each is kept in memory for the window)",
                r.names
            ));
        }
        if r.names == 0 {
            return Err(
                "`lookups: {names: 0}` would refuse every name below the wildcard: remove the rule instead"
                    .into(),
            );
        }
        Ok(Lookups {
            names: r.names,
            window: r.per.0,
        })
    }
}

impl std::fmt::Display for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} names per {}s", self.names, self.window.as_secs())
    }
}
