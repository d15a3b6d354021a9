//! `make demo` / `make demo-faulty`: a canary rollout through the whole veer loop on
//! 127.0.0.1, shown live (see [`veer_e2e::demo`]). Exits 0 only when the rollout ended the
//! way it should; 130 when interrupted during the run. Ctrl-C (or SIGTERM) stops it and
//! every process it started, also after the run with `--hold`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use veer_e2e::demo::{run, DemoOptions};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe. The demo polls the flag.
    STOP.store(true, Ordering::SeqCst);
}

const USAGE: &str =
    "usage: demo [--faulty] [--hold] [--kubernetes] [--users N] [--rps R] [--out DIR] [--plain]
  --faulty     v2 starts answering HTTP 500 part-way: the run must roll back
  --kubernetes the controller in Kubernetes mode on a local control plane (scripts/kube-up.sh):
               kubectl applies the Deployment and the Canary, kubectl set image releases v2
  --hold       after the run, keep everything up (with the addresses and commands to try)
               until Ctrl-C
  --users N    simulated users, each with its own cookie jar (default 300)
  --rps R      total requests per second (default 150)
  --out DIR    where the report goes (default out/)
  --plain      print plain lines instead of redrawing a status block";

fn parse(args: &[String]) -> Result<DemoOptions, String> {
    let mut o = DemoOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--faulty" => o.faulty = true,
            "--plain" => o.live = false,
            "--hold" => o.hold = true,
            "--kubernetes" => o.kubernetes = true,
            "--users" => {
                o.users = value("--users")?
                    .parse()
                    .map_err(|e| format!("--users: {e}"))?
            }
            "--rps" => {
                o.requests_per_second =
                    value("--rps")?.parse().map_err(|e| format!("--rps: {e}"))?
            }
            "--out" => o.out_dir = PathBuf::from(value("--out")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.users == 0 || o.requests_per_second <= 0.0 {
        return Err("--users and --rps must be above 0".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    match run(&options, &STOP) {
        Ok(outcome) if outcome.interrupted => {
            eprintln!("interrupted: every process the demo started is stopped");
            ExitCode::from(130)
        }
        Ok(outcome) if outcome.as_expected => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            if STOP.load(Ordering::SeqCst) {
                eprintln!("interrupted: every process the demo started is stopped");
                return ExitCode::from(130);
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
