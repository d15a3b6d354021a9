//! Test harness: starts real processes (Envoy, Prometheus, the controller, backends) on free
//! loopback ports, waits for readiness by polling with deadlines, and kills them on drop.
