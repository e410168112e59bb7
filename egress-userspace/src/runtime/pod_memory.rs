//! What egressd last decided for each pod cgroup, kept in a file so that a
//! restarted egressd (an upgrade, an OOM kill) or a rebooted node applies
//! it before the API server answers: a released pod keeps working, a
//! governed one stays governed, and one held stays held. Only a pod
//! cgroup that appeared meanwhile waits for the list.
//!
//! Pod cgroups are remembered by path: kubelet names each by its pod's uid
//! (a static pod's by its config hash), which no other pod ever has, and
//! gives it the same name again when the node reboots. One line each:
//! `released PATH`, `held PATH` or `policy:NAME PATH`, written to a new
//! file that then replaces the old one. A decision is kept while its pod
//! may come back: it is forgotten once its cgroup is gone and the API
//! server's list no longer has the pod (after a reboot, egressd may start
//! before kubelet makes the cgroups again).
//!
//! Held: a pod a policy governed, and whose pod that policy stopped
//! selecting (its labels, or its namespace's, changed). It stays refused
//! everything for as long as its cgroup lives.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
};

use super::kubernetes::Class;

/// What was decided for one pod cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Class(Class),
    Held,
}

#[derive(Default)]
pub struct PodMemory {
    /// None: not remembered (unit tests).
    file: Option<PathBuf>,
    /// Path below the cgroup2 root -> what was decided.
    pods: BTreeMap<PathBuf, Decision>,
}

impl PodMemory {
    /// What `file` remembers (`root`: the cgroup2 root, unused until a
    /// list says which pods are gone). `legacy`: the held pods file of
    /// egressd 0.1 (`<id> <path>` lines), taken over and removed.
    pub fn load(file: PathBuf, legacy: &Path, _root: &Path) -> PodMemory {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut pods: BTreeMap<PathBuf, Decision> = text
            .lines()
            .filter_map(|l| {
                let (what, rel) = l.split_once(' ')?;
                let decision = match what {
                    "released" => Decision::Class(Class::Released),
                    "held" => Decision::Held,
                    _ => Decision::Class(Class::Policy(what.strip_prefix("policy:")?.to_string())),
                };
                Some((PathBuf::from(rel), decision))
            })
            .collect();
        let old = std::fs::read_to_string(legacy).unwrap_or_default();
        for l in old.lines() {
            if let Some((_, rel)) = l.split_once(' ') {
                pods.insert(PathBuf::from(rel), Decision::Held);
            }
        }
        let memory = PodMemory {
            file: Some(file),
            pods,
        };
        memory.save();
        if !old.is_empty() && memory.saved() {
            let _ = std::fs::remove_file(legacy);
        }
        memory
    }

    pub fn is_held(&self, rel: &Path) -> bool {
        self.pods.get(rel) == Some(&Decision::Held)
    }

    /// The classes remembered (held pods left out: unmapped, they are
    /// held by `kubernetes-pending`).
    pub fn classes(&self) -> BTreeMap<PathBuf, Class> {
        self.pods
            .iter()
            .filter_map(|(rel, d)| match d {
                Decision::Class(c) => Some((rel.clone(), c.clone())),
                Decision::Held => None,
            })
            .collect()
    }

    /// The policy that governed the pod of `rel` when last decided.
    pub fn policy_of(&self, rel: &Path) -> Option<&str> {
        match self.pods.get(rel) {
            Some(Decision::Class(Class::Policy(name))) => Some(name),
            _ => None,
        }
    }

    /// Makes `mapped` (pod cgroup -> class) what is remembered, over what
    /// was (held pods stay held; a pod not mapped now keeps its last
    /// decision). `listed`: the uids the API server's last list named
    /// (None before the first): a decision whose cgroup is gone and whose
    /// pod the list does not name is forgotten.
    pub fn remember<'a>(
        &mut self,
        mapped: impl Iterator<Item = (&'a PathBuf, &'a Class)>,
        root: &Path,
        listed: Option<&HashSet<String>>,
    ) {
        let mut pods = self.pods.clone();
        for (rel, class) in mapped {
            if pods.get(rel) != Some(&Decision::Held) {
                pods.insert(rel.clone(), Decision::Class(class.clone()));
            }
        }
        if let Some(listed) = listed {
            pods.retain(|rel, _| {
                let path = root.join(rel);
                path.is_dir()
                    || crate::report::pod_names::pod_uid(&path).is_some_and(|u| listed.contains(&u))
            });
        }
        if pods != self.pods {
            self.pods = pods;
            self.save();
        }
    }

    pub fn hold(&mut self, rel: PathBuf) {
        if self.pods.insert(rel, Decision::Held) != Some(Decision::Held) {
            self.save();
        }
    }

    pub fn held(&self) -> Vec<PathBuf> {
        self.pods
            .iter()
            .filter(|(_, d)| **d == Decision::Held)
            .map(|(rel, _)| rel.clone())
            .collect()
    }

    /// Whether the file says what is remembered.
    fn saved(&self) -> bool {
        let Some(file) = &self.file else { return false };
        std::fs::read_to_string(file).unwrap_or_default() == self.text()
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (rel, d) in &self.pods {
            let what = match d {
                Decision::Held => "held".to_string(),
                Decision::Class(Class::Released) => "released".to_string(),
                Decision::Class(Class::Policy(name)) => format!("policy:{name}"),
            };
            out.push_str(&format!("{what} {}\n", rel.display()));
        }
        out
    }

    /// Writes the file (a new one beside it, then renamed); a failure is
    /// logged, and this run goes on with what it knows.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let tmp = file.with_extension("new");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.text().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        })();
        if let Err(e) = written {
            tracing::error!(file = %file.display(), "remembering the pods' classes: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_outlive_the_run_while_their_pods_may_come_back() {
        let root = std::env::temp_dir().join(format!("egressd-memory-{}", std::process::id()));
        let uid = |c: char| format!("{}-1111-4c3b-9a55-2b1c0d9e8f70", c.to_string().repeat(8));
        let [a, b, c, d] =
            ['a', 'b', 'c', 'd'].map(|x| PathBuf::from("kubepods").join(format!("pod{}", uid(x))));
        for rel in [&a, &b, &c, &d] {
            std::fs::create_dir_all(root.join(rel)).unwrap();
        }
        let file = root.join("run.pods");
        let legacy = root.join("run.held");
        std::fs::write(&legacy, format!("123 {}\n", d.display())).unwrap();
        let mut memory = PodMemory::load(file.clone(), &legacy, &root);
        assert!(memory.is_held(&d), "egressd 0.1's held pods are taken over");
        assert!(!legacy.exists());
        let mapped = [
            (a.clone(), Class::Policy("doc".into())),
            (b.clone(), Class::Released),
            (d.clone(), Class::Released),
        ];
        memory.remember(mapped.iter().map(|(r, c)| (r, c)), &root, None);
        memory.hold(c.clone());
        let again = PodMemory::load(file.clone(), &legacy, &root);
        assert_eq!(
            again.classes(),
            BTreeMap::from([
                (a.clone(), Class::Policy("doc".into())),
                (b.clone(), Class::Released),
            ]),
            "held pods are no class"
        );
        assert_eq!(again.held(), [c.clone(), d.clone()]);
        assert_eq!(again.policy_of(&a), Some("doc"));
        // After a reboot no pod cgroup is there yet: all is kept, also
        // through syncs before the first list, and after one that still
        // names the pods.
        std::fs::remove_dir_all(root.join("kubepods")).unwrap();
        let mut again = PodMemory::load(file.clone(), &legacy, &root);
        again.remember(std::iter::empty(), &root, None);
        let all: HashSet<String> = ['a', 'b', 'c', 'd'].map(uid).into_iter().collect();
        again.remember(std::iter::empty(), &root, Some(&all));
        assert_eq!(again.policy_of(&a), Some("doc"));
        assert_eq!(again.held(), [c.clone(), d.clone()]);
        // A list without b and c: their decisions go; a's and d's stay.
        let some: HashSet<String> = ['a', 'd'].map(uid).into_iter().collect();
        again.remember(std::iter::empty(), &root, Some(&some));
        let again = PodMemory::load(file, &legacy, &root);
        assert_eq!(again.held(), [d]);
        assert_eq!(
            again.classes(),
            BTreeMap::from([(a, Class::Policy("doc".into()))])
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
