//! `channels.unix`: the UNIX socket names a policy's processes may connect
//! or send to, and how each becomes a `UNIX_ALLOW` trie entry (see
//! `egress_common::UnixKey`).
//!
//! A name is matched as the caller writes it, before the kernel resolves
//! it: a path through a symbolic link, or relative to the working
//! directory, is not the path it leads to. So a directory entry covers
//! whatever sockets, and links, the agent can make beneath it: name only
//! directories the agent cannot write.

use std::{fmt, str::FromStr};

use egress_common::{unix_entry, UNIX_KEY_LEN, UNIX_PATH_MAX};
use serde::{de, Deserialize, Deserializer};

/// One `channels.unix` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnixName {
    /// `/run/app.sock`: that socket.
    Path(String),
    /// `/run/app/`: every socket beneath that directory.
    Dir(String),
    /// `@name`: that abstract name, exactly.
    Abstract(String),
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixName::Path(p) | UnixName::Dir(p) => f.write_str(p),
            UnixName::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

impl FromStr for UnixName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() || name.len() > UNIX_PATH_MAX - 1 {
                return Err(format!(
                    "`{s}`: an abstract name has 1 to {} bytes after the @",
                    UNIX_PATH_MAX - 1
                ));
            }
            return Ok(UnixName::Abstract(name.into()));
        }
        if !s.starts_with('/') {
            return Err(format!(
                "`{s}`: write an absolute path (`/run/app.sock`), a directory ending in / (`/run/app/`), or an abstract name (`@name`)"
            ));
        }
        if s.len() > UNIX_PATH_MAX - 1 {
            return Err(format!(
                "`{s}` is longer than a UNIX socket path can be ({} bytes)",
                UNIX_PATH_MAX - 1
            ));
        }
        if s == "/" {
            return Err("`/` would allow every UNIX socket path: name a directory".into());
        }
        let body = s.trim_end_matches('/');
        if s.len() - body.len() > 1
            || body[1..]
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || s.contains('\0')
        {
            return Err(format!(
                "`{s}`: write the path plainly, without `.`, `..`, `//` or NUL (it is matched as written)"
            ));
        }
        Ok(if s.ends_with('/') {
            UnixName::Dir(s.into())
        } else {
            UnixName::Path(s.into())
        })
    }
}

impl<'de> Deserialize<'de> for UnixName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// Directories anyone may write into: a name there can be made first, as a
/// symbolic link to any socket, by the agent.
const SHARED_DIRS: &[&str] = &[
    "/tmp/",
    "/var/tmp/",
    "/dev/shm/",
    "/run/user/",
    "/run/lock/",
    // Their links lead anywhere.
    "/proc/",
    "/dev/fd/",
];

/// A warning for an entry in, or above, a directory others may write.
pub fn shared_dir_warning(name: &UnixName) -> Option<String> {
    let (UnixName::Path(p) | UnixName::Dir(p)) = name else {
        return None;
    };
    let above = matches!(name, UnixName::Dir(_));
    SHARED_DIRS
        .iter()
        .find(|d| p.starts_with(*d) || (above && d.starts_with(p.as_str())))
        .map(|d| {
            format!(
                "channels.unix: `{p}` covers {d}, where the agent can make a name first as a symbolic link to any socket (names are matched as written): use a directory only its daemon can write"
            )
        })
}

/// The sockets of name-service daemons, which resolve names past egressd's
/// DNS proxy (and so carry what the agent puts in a name). glibc tries
/// nscd on every lookup, and falls back to DNS when refused: refused
/// without an event (`reason::NAME_SERVICE_SOCKET`), unless the policy names one.
pub const NAME_SERVICES: &[&str] = &[
    "/run/nscd/socket",
    "/var/run/nscd/socket",
    "/run/systemd/resolve/io.systemd.Resolve",
    "/var/run/systemd/resolve/io.systemd.Resolve",
];

/// One trie entry: the name part of the key, its prefix length in bits
/// (after the table id), and its `unix_entry` value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixEntry {
    pub name: [u8; UNIX_KEY_LEN - 4],
    pub bits: u32,
    pub value: u32,
}

impl UnixName {
    /// The trie entry allowing this name.
    pub fn entry(&self) -> UnixEntry {
        let mut name = [0u8; UNIX_KEY_LEN - 4];
        let len = match self {
            // The terminating NUL too: `/a/b` does not cover `/a/bc`.
            UnixName::Path(p) => {
                name[..p.len()].copy_from_slice(p.as_bytes());
                p.len() + 1
            }
            UnixName::Dir(p) => {
                name[..p.len()].copy_from_slice(p.as_bytes());
                p.len()
            }
            UnixName::Abstract(n) => {
                name[1] = n.len() as u8;
                name[2..2 + n.len()].copy_from_slice(n.as_bytes());
                2 + n.len()
            }
        };
        UnixEntry {
            name,
            bits: 8 * len as u32,
            value: unix_entry::ALLOW,
        }
    }
}

/// The entries of a policy's `channels.unix`, with the name-service sockets
/// it does not name.
pub fn entries(allowed: &[UnixName]) -> Vec<UnixEntry> {
    let mut out: Vec<UnixEntry> = allowed.iter().map(UnixName::entry).collect();
    for path in NAME_SERVICES {
        let name = UnixName::Path((*path).into());
        if !allowed.contains(&name) {
            out.push(UnixEntry {
                value: unix_entry::NAME_SERVICE,
                ..name.entry()
            });
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.name == b.name && a.bits == b.bits);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_refuse_what_would_mislead() {
        assert_eq!(
            "/run/a.sock".parse::<UnixName>(),
            Ok(UnixName::Path("/run/a.sock".into()))
        );
        assert_eq!(
            "/run/a/".parse::<UnixName>(),
            Ok(UnixName::Dir("/run/a/".into()))
        );
        assert_eq!("@x".parse::<UnixName>(), Ok(UnixName::Abstract("x".into())));
        for bad in [
            "a.sock",
            "",
            "/",
            "/run//a",
            "/run/../a",
            "/run/./a",
            "/run/a//",
            "@",
        ] {
            let e = bad.parse::<UnixName>().unwrap_err();
            assert!(e.contains('`'), "{bad}: {e}");
        }
        assert!(format!("/{}", "a".repeat(107)).parse::<UnixName>().is_err());
    }

    #[test]
    fn names_in_shared_directories_are_warned_about() {
        let w = |s: &str| shared_dir_warning(&s.parse().unwrap());
        assert!(w("/tmp/agent/").unwrap().contains("symbolic link"));
        assert!(w("/run/user/1000/bus").is_some());
        assert!(w("/run/tool/api.sock").is_none());
        assert!(w("/run/").unwrap().contains("/run/user/"));
        assert!(w("/dev/").is_some());
        assert!(w("@bus").is_none());
    }

    #[test]
    fn entries_cover_what_they_say() {
        let p = UnixName::Path("/a/b".into()).entry();
        assert_eq!(&p.name[..5], b"/a/b\0");
        assert_eq!(p.bits, 40);
        let d = UnixName::Dir("/a/".into()).entry();
        assert_eq!(d.bits, 24);
        let a = UnixName::Abstract("xy".into()).entry();
        assert_eq!(&a.name[..4], b"\0\x02xy");
        assert_eq!(a.bits, 32);
    }

    #[test]
    fn name_services_are_refused_unless_named() {
        let e = entries(&[]);
        assert_eq!(e.len(), NAME_SERVICES.len());
        assert!(e.iter().all(|e| e.value == unix_entry::NAME_SERVICE));
        let nscd = UnixName::Path("/run/nscd/socket".into());
        let e = entries(std::slice::from_ref(&nscd));
        let allowed: Vec<_> = e.iter().filter(|e| e.value == unix_entry::ALLOW).collect();
        assert_eq!(allowed.len(), 1);
        assert_eq!(allowed[0].name, nscd.entry().name);
        assert_eq!(e.len(), NAME_SERVICES.len());
    }
}
