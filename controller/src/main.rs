//! The `veer` binary: the controller and the CLI.
fn main() {}
