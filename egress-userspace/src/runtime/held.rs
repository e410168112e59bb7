//! Pod cgroups held for the rest of their life: a policy governed the pod,
//! and it stopped matching (its labels, or its namespace's, changed). They
//! are remembered in a file beside the control socket, so that a restarted
//! egressd (an upgrade, a crash) does not release what the previous run
//! held: one line per cgroup, its id and its path.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
};

use crate::kernel::cgroup::Cgroup;

#[derive(Default)]
pub struct Held {
    /// None: not remembered (`egressd exec`, unit tests).
    file: Option<PathBuf>,
    /// Path below the cgroup2 root -> cgroup id.
    cgroups: HashMap<PathBuf, u64>,
}

impl Held {
    /// What `file` remembers of cgroups that still exist (by id).
    pub fn load(file: PathBuf, root: &Path) -> Held {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let cgroups = text
            .lines()
            .filter_map(|l| {
                let (id, rel) = l.split_once(' ')?;
                Some((PathBuf::from(rel), id.parse().ok()?))
            })
            .filter(|(rel, id)| Cgroup::at(root, rel).id().ok() == Some(*id))
            .collect();
        let held = Held {
            file: Some(file),
            cgroups,
        };
        held.save();
        held
    }

    pub fn contains(&self, rel: &Path, id: u64) -> bool {
        self.cgroups.get(rel) == Some(&id)
    }

    pub fn insert(&mut self, rel: PathBuf, id: u64) {
        if self.cgroups.insert(rel, id) != Some(id) {
            self.save();
        }
    }

    /// Forgets the cgroups that are gone.
    pub fn prune(&mut self, root: &Path) {
        let before = self.cgroups.len();
        self.cgroups
            .retain(|rel, id| Cgroup::at(root, rel).id().ok() == Some(*id));
        if self.cgroups.len() != before {
            self.save();
        }
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.cgroups.keys().cloned().collect();
        v.sort();
        v
    }

    /// Writes the file (a new one beside it, then renamed), or removes it
    /// when nothing is held; a failure is logged, and the held pods stay
    /// held in this run.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        if self.cgroups.is_empty() {
            let _ = std::fs::remove_file(file);
            return;
        }
        let tmp = file.with_extension("held.new");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            for (rel, id) in &self.cgroups {
                writeln!(f, "{id} {}", rel.display())?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        })();
        if let Err(e) = written {
            tracing::error!(file = %file.display(), "remembering the held pods: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_cgroups_outlive_the_run_while_they_live() {
        let root = std::env::temp_dir().join(format!("egressd-held-{}", std::process::id()));
        let (a, b) = (
            PathBuf::from("kubepods/poda"),
            PathBuf::from("kubepods/podb"),
        );
        for rel in [&a, &b] {
            std::fs::create_dir_all(root.join(rel)).unwrap();
        }
        let file = root.join("run.held");
        let id = |rel: &Path| Cgroup::at(&root, rel).id().unwrap();
        let mut held = Held::load(file.clone(), &root);
        held.insert(a.clone(), id(&a));
        held.insert(b.clone(), id(&b));
        let again = Held::load(file.clone(), &root);
        assert!(again.contains(&a, id(&a)) && again.contains(&b, id(&b)));
        // b's pod is gone: forgotten, also by the next run.
        std::fs::remove_dir(root.join(&b)).unwrap();
        let mut again = Held::load(file.clone(), &root);
        assert_eq!(again.paths(), std::slice::from_ref(&a));
        std::fs::remove_dir(root.join(&a)).unwrap();
        again.prune(&root);
        assert!(!file.exists(), "nothing held: no file");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
