//! Test harness: network namespaces, cgroups, listeners and clients.
