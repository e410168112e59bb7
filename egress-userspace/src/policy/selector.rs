//! `pods:` selectors: which Kubernetes pods a policy governs, by the pod's
//! namespace (its name, and its labels) and the pod's labels, with
//! Kubernetes' label selector semantics (`matchLabels`, `matchExpressions`
//! with `In`, `NotIn`, `Exists`, `DoesNotExist`).
//!
//! Two policies whose selectors could both select one pod are an error
//! (`overlap`): which of them governs it would otherwise be an accident of
//! file order.

use std::collections::BTreeMap;

/// The label every namespace carries with its own name (Kubernetes 1.21+):
/// `namespace: NAME` is a requirement on it.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// One selector of `pods:`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelector {
    /// A namespace's name, or `*` for every namespace.
    pub namespace: String,
    /// The namespace's labels.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The pod's labels, every one required (as `matchLabels`).
    #[serde(default)]
    pub labels: Labels,
    /// Further requirements on the pod's labels.
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: Labels,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "RawRequirement")]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Option<Vec<String>>,
}

impl TryFrom<RawRequirement> for Requirement {
    type Error = String;

    fn try_from(r: RawRequirement) -> Result<Self, String> {
        if r.key.is_empty() {
            return Err("a matchExpressions entry needs a `key`".into());
        }
        let values = r.values.unwrap_or_default();
        match r.operator {
            Operator::In | Operator::NotIn if values.is_empty() => Err(format!(
                "`{}` with operator {:?} needs `values` (a non-empty list)",
                r.key, r.operator
            )),
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => Err(format!(
                "`{}` with operator {:?} takes no `values`",
                r.key, r.operator
            )),
            _ => Ok(Requirement {
                key: r.key,
                operator: r.operator,
                values,
            }),
        }
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }

    fn equals(key: &str, value: &str) -> Requirement {
        Requirement {
            key: key.to_string(),
            operator: Operator::In,
            values: vec![value.to_string()],
        }
    }
}

impl LabelSelector {
    /// Every requirement, `matchLabels` as `In` of one value.
    fn requirements(&self) -> Vec<Requirement> {
        self.match_labels
            .iter()
            .map(|(k, v)| Requirement::equals(k, v))
            .chain(self.match_expressions.iter().cloned())
            .collect()
    }
}

impl PodSelector {
    /// Whether a pod with `pod_labels`, in namespace `namespace` labelled
    /// `namespace_labels`, is selected.
    pub fn matches(&self, namespace: &str, namespace_labels: &Labels, pod_labels: &Labels) -> bool {
        let mut ns = namespace_labels.clone();
        ns.entry(NAME_LABEL.to_string())
            .or_insert_with(|| namespace.to_string());
        let (ns_reqs, pod_reqs) = self.requirements();
        ns_reqs.iter().all(|r| r.matches(&ns)) && pod_reqs.iter().all(|r| r.matches(pod_labels))
    }

    /// The requirements on the namespace's labels and on the pod's.
    fn requirements(&self) -> (Vec<Requirement>, Vec<Requirement>) {
        let mut ns = self.namespace_selector.requirements();
        if self.namespace != "*" {
            ns.push(Requirement::equals(NAME_LABEL, &self.namespace));
        }
        let pod = LabelSelector {
            match_labels: self.labels.clone(),
            match_expressions: self.match_expressions.clone(),
        }
        .requirements();
        (ns, pod)
    }

    /// Whether some pod could be selected by both `self` and `other`:
    /// false only where their requirements contradict each other.
    pub fn overlaps(&self, other: &PodSelector) -> bool {
        let (a_ns, a_pod) = self.requirements();
        let (b_ns, b_pod) = other.requirements();
        satisfiable(&[a_ns, b_ns].concat()) && satisfiable(&[a_pod, b_pod].concat())
    }
}

/// Whether some set of labels meets every requirement of `reqs`.
fn satisfiable(reqs: &[Requirement]) -> bool {
    let mut keys: Vec<&str> = reqs.iter().map(|r| r.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter().all(|key| {
        let on_key: Vec<&Requirement> = reqs.iter().filter(|r| r.key == key).collect();
        let absent_ok = on_key
            .iter()
            .all(|r| matches!(r.operator, Operator::NotIn | Operator::DoesNotExist));
        if absent_ok {
            return true;
        }
        if on_key.iter().any(|r| r.operator == Operator::DoesNotExist) {
            return false; // present, and absent
        }
        // Present: a value every `In` lists and no `NotIn` does. Without
        // an `In`, some value nobody named will do.
        let mut ins = on_key.iter().filter(|r| r.operator == Operator::In);
        let Some(first) = ins.next() else {
            return true;
        };
        let ins: Vec<&&Requirement> = ins.collect();
        first.values.iter().any(|v| {
            ins.iter().all(|r| r.values.contains(v))
                && on_key
                    .iter()
                    .all(|r| r.operator != Operator::NotIn || !r.values.contains(v))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(yaml: &str) -> PodSelector {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_as_kubernetes_does() {
        let s = sel("namespace: '*'\nnamespaceSelector: {matchLabels: {team: ai}}\nlabels: {app: a}\nmatchExpressions:\n  - {key: tier, operator: In, values: [agent, tool]}\n  - {key: debug, operator: DoesNotExist}\n  - {key: env, operator: NotIn, values: [prod]}\n");
        let ns = labels(&[("team", "ai")]);
        assert!(s.matches("x", &ns, &labels(&[("app", "a"), ("tier", "tool")])));
        assert!(!s.matches(
            "x",
            &labels(&[]),
            &labels(&[("app", "a"), ("tier", "tool")])
        ));
        assert!(
            !s.matches("x", &ns, &labels(&[("app", "a")])),
            "tier missing"
        );
        assert!(!s.matches(
            "x",
            &ns,
            &labels(&[("app", "a"), ("tier", "agent"), ("debug", "1")])
        ));
        assert!(!s.matches(
            "x",
            &ns,
            &labels(&[("app", "a"), ("tier", "agent"), ("env", "prod")])
        ));
        let named = sel("namespace: agents\nlabels: {app: a}\n");
        assert!(named.matches("agents", &labels(&[]), &labels(&[("app", "a")])));
        assert!(!named.matches("other", &labels(&[]), &labels(&[("app", "a")])));
    }

    #[test]
    fn overlaps_unless_requirements_contradict() {
        let cases = [
            ("namespace: a\nlabels: {app: x}", "namespace: b\nlabels: {app: x}", false),
            ("namespace: a\nlabels: {app: x}", "namespace: '*'\nlabels: {app: x}", true),
            ("namespace: a\nlabels: {app: x}", "namespace: a\nlabels: {app: y}", false),
            ("namespace: a\nlabels: {app: x}", "namespace: a\nlabels: {tier: t}", true),
            ("namespace: a", "namespace: a\nmatchExpressions: [{key: app, operator: DoesNotExist}]", true),
            ("namespace: a\nlabels: {app: x}", "namespace: a\nmatchExpressions: [{key: app, operator: DoesNotExist}]", false),
            ("namespace: a\nlabels: {app: x}", "namespace: a\nmatchExpressions: [{key: app, operator: NotIn, values: [x]}]", false),
            ("namespace: a\nmatchExpressions: [{key: app, operator: In, values: [x, y]}]", "namespace: a\nmatchExpressions: [{key: app, operator: NotIn, values: [x]}]", true),
            ("namespace: '*'\nnamespaceSelector: {matchLabels: {team: ai}}", "namespace: '*'\nnamespaceSelector: {matchLabels: {team: web}}", false),
            ("namespace: '*'\nnamespaceSelector: {matchLabels: {kubernetes.io/metadata.name: a}}", "namespace: b", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(sel(a).overlaps(&sel(b)), want, "{a} / {b}");
            assert_eq!(sel(b).overlaps(&sel(a)), want, "{b} / {a}");
        }
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in [
            "namespace: a\nmatchExpressions: [{key: app, operator: In}]",
            "namespace: a\nmatchExpressions: [{key: app, operator: Exists, values: [x]}]",
            "namespace: a\nmatchExpressions: [{key: app, operator: Equals, values: [x]}]",
            "namespace: a\nmatchExpressions: [{key: '', operator: Exists}]",
            "namespace: a\nnamespaceSelector: {matchLabel: {a: b}}",
        ] {
            assert!(
                serde_yaml_ng::from_str::<PodSelector>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
