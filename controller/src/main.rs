//! The `veer` binary: the controller and the CLI (see `veer --help` and [`veer_controller::cli`]).

use std::process::ExitCode;

use clap::Parser;
use veer_controller::cli::{run, Cli};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
