//! What the DNS proxy reads of its policy on every query, without taking
//! the allowlist's lock: the policy, and where its names are resolved. The
//! allowlist owns the cell and replaces the view whole when the policy is
//! reloaded; a query in flight keeps the view it started with, and what it
//! admits is judged again under the lock (`state::answers`).

use std::{
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
};

use anyhow::Result;

use crate::policy::{resolver, Policy};

/// One installed policy, as its DNS proxy and `explain` read it.
pub struct PolicyView {
    pub policy: Policy,
    /// Where the proxy forwards allowed queries.
    pub upstream: Vec<SocketAddr>,
    /// The resolver's search domains (see `resolver::search_expansion`).
    pub search: Vec<String>,
}

impl PolicyView {
    pub fn new(policy: Policy) -> Result<PolicyView> {
        Ok(PolicyView {
            upstream: resolver::upstreams(&policy)?,
            search: resolver::search_domains(&policy),
            policy,
        })
    }
}

/// The current view of one policy, shared with its DNS proxy.
#[derive(Clone)]
pub struct ViewCell(Arc<RwLock<Arc<PolicyView>>>);

impl ViewCell {
    pub(super) fn new(view: PolicyView) -> ViewCell {
        ViewCell(Arc::new(RwLock::new(Arc::new(view))))
    }

    /// The view in force now.
    pub fn get(&self) -> Arc<PolicyView> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set(&self, view: PolicyView) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }
}
