//! Who besides root may change what a `channels.unix` name leads to. A
//! name is matched as written, so whoever can write a directory on its way
//! can make the name (or a directory on its way) first, or put it back, as
//! a symbolic link to any socket. Read from the file system as it is when
//! a policy loads: `exec` refuses a name its command could redirect, and
//! `exec` and `run` warn of the others.

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::unix::UnixName;

/// Who may write a directory (root aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Anyone,
    Uid(u32),
    Gid(u32),
}

impl Writer {
    /// Whether a process of `uid` and primary group `gid` (no other
    /// groups: `exec --user` clears them) is this writer.
    pub fn includes(&self, uid: u32, gid: u32) -> bool {
        match *self {
            Writer::Anyone => true,
            Writer::Uid(u) => u == uid,
            Writer::Gid(g) => g == gid,
        }
    }
}

impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Writer::Anyone => f.write_str("any user"),
            Writer::Uid(u) => write!(f, "uid {u}"),
            Writer::Gid(g) => write!(f, "group {g}"),
        }
    }
}

/// A directory on a name's way, and who may change the entry there.
#[derive(Debug, PartialEq, Eq)]
pub struct Writable {
    pub dir: PathBuf,
    pub writers: Vec<Writer>,
}

/// The directories on `name`'s way (for `/a/b/`, `/a/b` itself too) where
/// someone other than root may change what the name leads to. In a sticky
/// directory (`/tmp`) only an entry's owner may replace it, so there the
/// writers are the next entry's owner, or (the entry missing) whoever may
/// make it. A missing directory ends the walk: whoever may make it was
/// found in its parent.
pub fn writable_dirs(name: &UnixName) -> Vec<Writable> {
    let (path, itself) = match name {
        UnixName::Path(p) => (Path::new(p.as_str()), false),
        UnixName::Dir(p) => (Path::new(p.trim_end_matches('/')), true),
        UnixName::Abstract(_) => return Vec::new(),
    };
    let mut chain: Vec<&Path> = path.ancestors().collect();
    chain.reverse();
    let dirs = if itself { chain.len() } else { chain.len() - 1 };
    let mut out = Vec::new();
    for i in 0..dirs {
        let Ok(m) = std::fs::metadata(chain[i]) else {
            break;
        };
        let mode = m.mode();
        let mut writers = Vec::new();
        if m.uid() != 0 && mode & 0o200 != 0 {
            writers.push(Writer::Uid(m.uid()));
        }
        let next = chain
            .get(i + 1)
            .and_then(|c| std::fs::symlink_metadata(c).ok());
        match next {
            Some(entry) if mode & 0o1000 != 0 => {
                if entry.uid() != 0 {
                    writers.push(Writer::Uid(entry.uid()));
                }
            }
            _ => {
                if mode & 0o020 != 0 && m.gid() != 0 {
                    writers.push(Writer::Gid(m.gid()));
                }
                if mode & 0o002 != 0 {
                    writers.push(Writer::Anyone);
                }
            }
        }
        writers.dedup();
        if !writers.is_empty() {
            out.push(Writable {
                dir: chain[i].to_path_buf(),
                writers,
            });
        }
    }
    out
}

/// What to say of `name` and one of its writable directories.
pub fn warning(name: &UnixName, w: &Writable) -> String {
    let who: Vec<String> = w.writers.iter().map(ToString::to_string).collect();
    format!(
        "channels.unix: `{name}`: {} is writable by {}, who could make the name a symbolic link to any socket (names are matched as written): name a socket in a directory only root and its daemon can write",
        w.dir.display(),
        who.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sticky_directory_matters_only_where_the_entry_is_missing_or_not_roots() {
        let root_only: UnixName = "/proc/self/".parse().unwrap();
        assert_eq!(writable_dirs(&root_only), Vec::new());
        // /tmp is sticky and anyone's: a missing name there is anyone's.
        let missing: UnixName = "/tmp/egressd-no-such-dir/api.sock".parse().unwrap();
        let found = writable_dirs(&missing);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].dir, PathBuf::from("/tmp"));
        assert!(found[0].writers.contains(&Writer::Anyone));
        assert!(Writer::Anyone.includes(65534, 65534));
        assert!(!Writer::Uid(1000).includes(65534, 65534));
        assert!(Writer::Gid(65534).includes(1, 65534));
    }
}
