//! Kubernetes mode.
