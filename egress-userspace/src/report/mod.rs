//! What egressd tells: deny events from the kernel's ring buffer and the
//! DNS proxy (`events`), Prometheus metrics (`metrics`), the control socket
//! that serves status, events, explanations and reloads (`control`), and
//! which rule allows a destination (`explain`), and what went through each
//! allowed rule (`rule_metrics`).

pub mod control;
pub mod describe;
pub mod endpoint;
pub mod events;
pub mod explain;
pub mod metrics;
pub mod pod_names;
pub mod rule_metrics;
pub mod summary;
