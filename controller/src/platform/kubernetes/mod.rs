//! Kubernetes mode.

pub mod crd;
