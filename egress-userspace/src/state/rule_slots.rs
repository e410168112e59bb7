//! Rule slots: where the kernel counts what goes through each allow rule
//! and keeps its budget (see `egress_common::rules`). A rule keeps its slot
//! across reloads as long as its policy keeps it (the same policy name and
//! the same rule, by its label), so that its counters and its budget's
//! window go on; a slot given up is zeroed before another rule takes it.
//! Past `MAX_RULE_SLOTS` rules, the rest are not counted (`assign` warns),
//! and a policy whose budgeted rule gets no slot does not load.

use std::collections::HashMap;

use anyhow::Result;
use egress_common::MAX_RULE_SLOTS;

use crate::{
    kernel::{rules, Maps},
    policy::Policy,
};

/// Each rule's label, as metrics and `status` name it; a label that two
/// rules share (`ip: X` and `cidr: X/32`) is told apart by `#2`, `#3`...,
/// so that each keeps a slot and a budget of its own.
pub fn labels(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(policy.rules.len());
    for r in &policy.rules {
        let label = r.label();
        let seen = out
            .iter()
            .filter(|l| **l == label || l.starts_with(&format!("{label} #")))
            .count();
        out.push(if seen == 0 {
            label
        } else {
            format!("{label} #{}", seen + 1)
        });
    }
    out
}

#[derive(Default)]
pub struct RuleSlots {
    by_rule: HashMap<(String, String), u16>,
    free: Vec<u16>,
    /// Slots handed out so far (slot 0 is never one).
    made: u16,
}

impl RuleSlots {
    /// The slot of each rule of `policy` (0: none left), its budget
    /// written; this policy's rules that `policy` no longer has give their
    /// slots up.
    pub fn assign(&mut self, policy: &Policy, maps: &mut Maps) -> Result<Vec<u16>> {
        let labels = labels(policy);
        let gone: Vec<(String, String)> = self
            .by_rule
            .keys()
            .filter(|(p, l)| *p == policy.name && !labels.contains(l))
            .cloned()
            .collect();
        for key in gone {
            if let Some(slot) = self.by_rule.remove(&key) {
                self.free.push(slot);
            }
        }
        let mut slots = Vec::with_capacity(labels.len());
        let mut uncounted = 0;
        for (rule, label) in policy.rules.iter().zip(labels) {
            let key = (policy.name.clone(), label);
            let slot = match self.by_rule.get(&key) {
                Some(s) => *s,
                None => match self.take(maps)? {
                    Some(s) => {
                        self.by_rule.insert(key, s);
                        s
                    }
                    None if rule.budget.is_some() => anyhow::bail!(
                        "policy `{}`: the rule `{}` carries a budget, but every one of the kernel's {} rule slots is taken: its budget cannot be kept (load fewer rules)",
                        policy.name,
                        rule.label(),
                        MAX_RULE_SLOTS - 1
                    ),
                    None => {
                        uncounted += 1;
                        0
                    }
                },
            };
            if slot != 0 {
                rules::set_budget(maps, slot, rule.budget)?;
            }
            slots.push(slot);
        }
        if uncounted > 0 {
            tracing::warn!(
                policy = policy.name,
                "{uncounted} rule(s) are not counted and carry no budget: {} rules at most are counted across all policies",
                MAX_RULE_SLOTS - 1
            );
        }
        Ok(slots)
    }

    /// A free slot, zeroed; None when every slot is taken.
    fn take(&mut self, maps: &mut Maps) -> Result<Option<u16>> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if u32::from(self.made) + 1 < MAX_RULE_SLOTS => {
                self.made += 1;
                self.made
            }
            None => return Ok(None),
        };
        rules::reset(maps, slot)?;
        Ok(Some(slot))
    }

    /// Gives up every slot of policy `name`.
    pub fn release(&mut self, name: &str) {
        let mut freed = Vec::new();
        self.by_rule.retain(|(p, _), s| {
            if p == name {
                freed.push(*s);
                false
            } else {
                true
            }
        });
        self.free.extend(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_that_share_a_label_are_told_apart() {
        let p = crate::policy::validate::parse(
            "name: p\nallow:\n  - ip: 203.0.113.5\n  - cidr: 203.0.113.5/32\n  - ip: 203.0.113.5\n    protocol: udp\n  - cidr: 203.0.113.5/32\n",
            std::path::Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(
            labels(&p),
            [
                "203.0.113.5:*",
                "203.0.113.5:* #2",
                "203.0.113.5:*/udp",
                "203.0.113.5:* #3"
            ]
        );
    }
}
