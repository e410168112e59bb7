//! The Debian package archive, as this host's own apt configuration names
//! it, and apt run on suites of our choosing with lists kept under
//! target/vm/apt/ (the host's sources, lists and caches stay untouched).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};

/// Where the archive and its security updates are served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The main archive (its path ends in `/debian`).
    pub archive: String,
    /// Security updates (`/debian-security`), if the host names them.
    pub security: Option<String>,
    /// The keyring the host's entries are signed by, if they name one.
    pub signed_by: Option<String>,
}

/// One `deb` entry of a sources file: its URI, suites and keyring.
#[derive(Debug)]
struct Entry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// Entries of a deb822 `.sources` file (`Types: deb` stanzas only).
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let (Some(types), Some(uris), Some(suites)) =
            (field("Types"), field("URIs"), field("Suites"))
        else {
            continue;
        };
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
            || !types.split_whitespace().any(|t| t == "deb")
        {
            continue;
        }
        for uri in uris.split_whitespace() {
            out.push(Entry {
                uri: uri.to_string(),
                suites: suites.split_whitespace().map(String::from).collect(),
                signed_by: field("Signed-By"),
            });
        }
    }
    out
}

/// Entries of a one-line-style `.list` file.
fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut signed_by = None;
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(opts) => {
                let (opts, after) = opts.split_once(']').unwrap_or((opts, ""));
                signed_by = opts
                    .split_whitespace()
                    .find_map(|o| o.strip_prefix("signed-by="))
                    .map(String::from);
                after
            }
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Entry {
                uri: uri.to_string(),
                suites: vec![suite.to_string()],
                signed_by,
            });
        }
    }
    out
}

/// Picks the archive and security URIs out of the host's entries.
fn mirror_from(entries: &[Entry]) -> Option<Mirror> {
    let ends = |e: &Entry, tail: &str| e.uri.trim_end_matches('/').ends_with(tail);
    let archive = entries
        .iter()
        .find(|e| ends(e, "/debian") && e.suites.iter().any(|s| !s.contains('-')))?;
    let security = entries.iter().find(|e| ends(e, "/debian-security"));
    Some(Mirror {
        archive: archive.uri.trim_end_matches('/').to_string(),
        security: security.map(|e| e.uri.trim_end_matches('/').to_string()),
        signed_by: archive.signed_by.clone(),
    })
}

/// Reads /etc/apt/sources.list and /etc/apt/sources.list.d/ at run time.
pub fn host_mirror() -> Result<Mirror> {
    let mut entries = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            Some("list") => entries.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    mirror_from(&entries).context(
        "no Debian archive (a URI ending in /debian) in /etc/apt/sources.list or sources.list.d",
    )
}

/// apt working on one suite with sources, lists and cache of its own.
pub struct Suite {
    pub name: &'static str,
    dir: PathBuf,
}

impl Suite {
    /// Writes the suite's sources list under `root` (target/vm/apt).
    pub fn new(name: &'static str, mirror: &Mirror, root: &Path) -> Result<Suite> {
        let dir = root.join(name);
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let opts = mirror
            .signed_by
            .as_ref()
            .map(|k| format!("[signed-by={k}] "))
            .unwrap_or_default();
        let mut list = format!("deb {opts}{} {name} main\n", mirror.archive);
        if let Some(sec) = &mirror.security {
            list.push_str(&format!("deb {opts}{sec} {name}-security main\n"));
        }
        fs::write(dir.join("sources.list"), list)?;
        Ok(Suite { name, dir })
    }

    fn apt(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        cmd.arg("-o")
            .arg(opt("Dir::Etc::sourcelist", &self.dir.join("sources.list")))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(opt("Dir::State::Lists", &self.dir.join("lists")))
            .arg("-o")
            .arg(opt("Dir::Cache", &self.dir.join("cache")))
            // The .debs land in target/, which apt's own user may not reach.
            .args(["-o", "APT::Sandbox::User=root"]);
        cmd
    }

    /// `apt-get update` for this suite, unless its lists are fresher than
    /// `max_age`.
    pub fn update(&self, max_age: Duration) -> Result<()> {
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < max_age);
        if fresh {
            return Ok(());
        }
        eprintln!("vm-test: apt-get update ({})", self.name);
        run(self.apt("apt-get").args(["update", "-qq"]))?;
        fs::write(stamp, "")?;
        Ok(())
    }

    /// The package a meta-package depends on first (its newest build),
    /// e.g. `linux-image-cloud-amd64` -> `linux-image-6.1.0-NN-cloud-amd64`.
    pub fn resolve_meta(&self, meta: &str, prefix: &str) -> Result<String> {
        let out = self
            .apt("apt-cache")
            .args(["depends", meta])
            .output()
            .context("apt-cache depends")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with(prefix))
            .map(String::from)
            .with_context(|| format!("{meta} in {} depends on no {prefix}*", self.name))
    }

    /// `apt-get download PKG` into `dir`; returns the .deb's path.
    pub fn download(&self, pkg: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        run(self
            .apt("apt-get")
            .current_dir(dir)
            .args(["download", "-qq", pkg]))?;
        fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))
    }
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_and_one_line_sources_give_the_archive_and_security() {
        let mut e = parse_deb822(
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /k.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n\
             Suites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://other.example/x\n\
             Suites: nodistro\nEnabled: no\n",
        );
        e.extend(parse_one_line(
            "# c\ndeb [arch=amd64] https://other.example/apt stable main\n",
        ));
        let m = mirror_from(&e).unwrap();
        assert_eq!(m.archive, "http://mirror.example/debian");
        assert_eq!(
            m.security.as_deref(),
            Some("http://mirror.example/debian-security")
        );
        assert_eq!(m.signed_by.as_deref(), Some("/k.gpg"));
        let one = parse_one_line("deb [signed-by=/a.gpg] http://m.example/debian/ bullseye main\n");
        assert_eq!(
            mirror_from(&one).unwrap().archive,
            "http://m.example/debian"
        );
    }
}
