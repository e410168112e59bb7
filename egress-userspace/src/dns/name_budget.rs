//! The distinct names each wildcard rule's lookups have used in its
//! window (see `policy::lookups`): a name asked for again is free; a new
//! one is counted; once a rule's names are spent, new names below it are
//! answered NXDOMAIN until its window ends. One count per policy, shared
//! by every cgroup and pod the policy governs.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Instant,
};

use crate::policy::lookups::Lookups;

/// The windows of one policy's wildcard rules, by rule (`*.domain`).
#[derive(Default)]
pub struct NameBudgets {
    windows: Mutex<HashMap<String, Window>>,
}

struct Window {
    started: Instant,
    names: HashSet<String>,
}

impl NameBudgets {
    /// Counts a lookup of `name` against the wildcard rules that allow it
    /// (`limits`, from `Policy::lookup_limits_for`): fine if a rule counted
    /// it already in its window, or has room (then it is counted there);
    /// otherwise the rule that refuses it (the first).
    pub fn charge(
        &self,
        limits: &[(String, Lookups)],
        name: &str,
        now: Instant,
    ) -> Result<(), String> {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (rule, limit) in limits {
            let w = windows.entry(rule.clone()).or_insert_with(|| Window {
                started: now,
                names: HashSet::new(),
            });
            if now.duration_since(w.started) >= limit.window {
                w.started = now;
                w.names.clear();
            }
            if w.names.contains(name) {
                return Ok(());
            }
        }
        for (rule, limit) in limits {
            let w = windows.get_mut(rule).expect("made above");
            if w.names.len() < limit.names as usize {
                w.names.insert(name.to_string());
                return Ok(());
            }
        }
        match limits.first() {
            Some((rule, _)) => Err(rule.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(names: u32) -> Lookups {
        Lookups {
            names,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn new_names_are_counted_until_spent_and_old_ones_stay_free() {
        let b = NameBudgets::default();
        let t = Instant::now();
        let rules = [("*.cdn.test".to_string(), limit(2))];
        assert!(b.charge(&rules, "a.cdn.test", t).is_ok());
        assert!(b.charge(&rules, "b.cdn.test", t).is_ok());
        assert_eq!(b.charge(&rules, "c.cdn.test", t), Err("*.cdn.test".into()));
        assert!(b.charge(&rules, "a.cdn.test", t).is_ok());
        // A new window.
        let later = t + Duration::from_secs(61);
        assert!(b.charge(&rules, "c.cdn.test", later).is_ok());
        assert!(b.charge(&rules, "d.cdn.test", later).is_ok());
        assert!(b.charge(&rules, "e.cdn.test", later).is_err());
    }

    #[test]
    fn a_name_under_two_wildcards_uses_the_one_with_room() {
        let b = NameBudgets::default();
        let t = Instant::now();
        let inner = ("*.img.cdn.test".to_string(), limit(1));
        let outer = ("*.cdn.test".to_string(), limit(1));
        let both = [inner.clone(), outer.clone()];
        assert!(b.charge(&both, "a.img.cdn.test", t).is_ok());
        assert!(b.charge(&both, "b.img.cdn.test", t).is_ok());
        assert!(b.charge(&[outer], "x.cdn.test", t).is_err());
        assert!(b.charge(&both, "c.img.cdn.test", t).is_err());
        assert!(b.charge(&both, "b.img.cdn.test", t).is_ok());
    }
}
