//! egressd as the agent's resolver. The kernel programs redirect DNS from a
//! governed cgroup (port 53, UDP and TCP, to any address) to the policy's
//! proxy on 127.0.0.1 and ::1 (`sockets`). The proxy (`proxy`) answers only
//! names an allow rule matches: others get NXDOMAIN (or REFUSED,
//! `dns.refuse_with`) and a deny event, and nothing is sent upstream for
//! them (this shuts the `<secret>.attacker.example` tunnel); below a
//! wildcard only so many distinct names per window (`name_budget`). For allowed
//! names it asks the upstream resolver (`forward`, `upstream`), has the
//! A/AAAA answers admitted into the policy's allowlist (`state::answers`), and
//! only then replies. `refresh` is egressd's own lookups of exact hosts and
//! the sweep of expired addresses.

pub mod forward;
pub mod message;
pub mod name_budget;
pub mod proxy;
pub mod refresh;
pub mod sockets;
pub mod tcp_clients;
pub mod upstream;

/// Aborts tasks when dropped (a task that owns others ends them with it).
pub struct AbortOnDrop(pub Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
