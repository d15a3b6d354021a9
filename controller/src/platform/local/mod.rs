//! Local mode: Canary specs from a directory, the state in one JSON file.

pub mod store;
